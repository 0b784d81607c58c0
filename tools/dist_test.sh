#!/usr/bin/env bash
# Multi-process testing with torchrun:  tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py args]
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
# The interpreter: $PYTHON if set, else the project's venv (make install) when it exists, else python on PATH.
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$PYTHON" ]; then
    if [ -x "$REPO_DIR/.venv/bin/python" ]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python; fi
fi
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "$(basename "$0"): '$PYTHON' cannot import torch; run 'make install' (creates .venv) or set PYTHON=/path/to/python" >&2
    exit 2
fi

PYTHONPATH="$REPO_DIR":$PYTHONPATH \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
