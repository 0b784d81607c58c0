#!/usr/bin/env bash
# Builds mmcv (default 2.1.0) with its CUDA ops against a Python environment's torch.
#
#   tools/build_mmcv_cuda.sh PYTHON [MMCV_SDIST]
#
# PYTHON      the target environment's python (a CUDA torch installed there).
# MMCV_SDIST  optional: mmcv's source tarball (mmcv-2.1.0.tar.gz); else pip fetches it.
# Environment: CUDA_HOME (default: the toolkit of the nvcc on PATH), TORCH_CUDA_ARCH_LIST (default 9.0),
# MAX_JOBS (default: cores), MMCV_VERSION (default 2.1.0), BUILD_DIR (default: temp dir).
#
# What it decides by probing, not by machine:
# 1. the C++ standard: mmcv's setup.py hard-codes -std=c++14 / c++17 for gcc and nvcc, and torch
#    >= 2.10-ish headers stop with "#error C++20 or later compatible compiler is required to use ATen".
#    It preprocesses torch's ATen/ATen.h with c++17, then c++20; the first that passes wins.
#    gcc gets the standard from mmcv's extra_compile_args, after every flag an environment variable
#    can add, so the standard is rewritten in a copy of mmcv's setup.py (mmcv's only change).
# 2. the CUDA library headers: torch's ATen/cuda headers include cusparse.h, cublas_v2.h...; a
#    toolkit with only nvcc and the runtime lacks them; pip's nvidia-* packages (torch's deps) hold
#    them in site-packages/nvidia/*/include, which go on CPATH (searched after the toolkit's -I, by
#    gcc and nvcc), only for the headers the toolkit lacks.
# Then it checks: `import mmcv._ext`, the CUDA fat binary (.nv_fatbin) and the exported
# *CUDAKernelLauncher symbols.
set -euo pipefail

PY=${1:?usage: tools/build_mmcv_cuda.sh PYTHON [MMCV_SDIST]}
[ -x "$PY" ] || { echo "[build_mmcv_cuda] error: no python at $PY" >&2; exit 1; }
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, without resolving the venv's link
SDIST=${2:+$(cd "$(dirname "$2")" && pwd)/$(basename "$2")}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

say() { echo "[build_mmcv_cuda] $*"; }
die() { echo "[build_mmcv_cuda] error: $*" >&2; exit 1; }

# --- torch and CUDA -----------------------------------------------------------------------------------
read -r TORCH_VERSION TORCH_CUDA TORCH_INCLUDE SITE < <("$PY" - 2>/dev/null <<'EOF'
import os, torch
root = os.path.dirname(torch.__file__)
print(torch.__version__, torch.version.cuda, os.path.join(root, 'include'), os.path.dirname(root))
EOF
)
[ -n "${TORCH_VERSION:-}" ] || die "$PY cannot import torch; install a CUDA build of torch there first"
[ "$TORCH_CUDA" != "None" ] || die "torch $TORCH_VERSION in $PY is a CPU build; install a CUDA build first"
# The toolkit: CUDA_HOME, else the one the nvcc on PATH reports (TOP in its dry run; /usr/local/bin/nvcc
# may be a wrapper script), else /usr/local/cuda. Exported, so torch's build uses the same toolkit.
if [ -z "${CUDA_HOME:-}" ]; then
  TOP=$(cd /tmp && nvcc -dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' || true)
  CUDA_HOME=$( [ -n "$TOP" ] && cd "$TOP" && pwd || echo /usr/local/cuda)
fi
export CUDA_HOME
[ -x "$CUDA_HOME/bin/nvcc" ] || die "no nvcc at CUDA_HOME=$CUDA_HOME/bin/nvcc; set CUDA_HOME to the CUDA toolkit"
NVCC_VERSION=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[ "${NVCC_VERSION%%.*}" = "${TORCH_CUDA%%.*}" ] ||
  die "nvcc $NVCC_VERSION at $CUDA_HOME does not match torch's CUDA $TORCH_CUDA (major versions differ)"
say "torch $TORCH_VERSION (CUDA $TORCH_CUDA), nvcc $NVCC_VERSION at $CUDA_HOME," \
    "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS"

# --- 1. C++ standard -----------------------------------------------------------------------------------
CXX_STD=
for std in c++17 c++20; do
  if ${CXX:-c++} -std=$std -E -x c++ -I"$TORCH_INCLUDE" "$TORCH_INCLUDE/ATen/ATen.h" >/dev/null 2>&1; then
    CXX_STD=$std
    break
  fi
done
[ -n "$CXX_STD" ] || die "${CXX:-c++} preprocesses torch's ATen/ATen.h neither with -std=c++17 nor c++20"
say "C++ standard for torch's headers: $CXX_STD"

# --- 2. CUDA library headers ---------------------------------------------------------------------------
EXTRA_INCLUDE=
for header in cusparse.h cublas_v2.h cublasLt.h cusolverDn.h curand.h; do
  [ -f "$CUDA_HOME/include/$header" ] && continue
  found=$(ls -d "$SITE"/nvidia/*/include/"$header" 2>/dev/null | head -n 1 || true)
  [ -n "$found" ] || die "$header is neither in $CUDA_HOME/include nor in $SITE/nvidia/*/include"
  dir=$(dirname "$found")
  case ":$EXTRA_INCLUDE:" in *":$dir:"*) ;; *) EXTRA_INCLUDE=${EXTRA_INCLUDE:+$EXTRA_INCLUDE:}$dir ;; esac
done
if [ -n "$EXTRA_INCLUDE" ]; then
  export CPATH=$EXTRA_INCLUDE${CPATH:+:$CPATH}
  say "CUDA library headers missing from the toolkit, taken from: $EXTRA_INCLUDE"
else
  say "CUDA library headers: the toolkit's own"
fi

# --- mmcv source ---------------------------------------------------------------------------------------
WORK=${BUILD_DIR:-$(mktemp -d -t mmcv-cuda-XXXXXX)}
mkdir -p "$WORK"
if [ -z "$SDIST" ]; then
  # pip prepares the sdist's metadata: no isolation (mmcv's setup.py imports pkg_resources)
  "$PY" -m pip download --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" \
    -d "$WORK"
  SDIST="$WORK/mmcv-$MMCV_VERSION.tar.gz"
fi
[ -f "$SDIST" ] || die "no mmcv source tarball at $SDIST"
rm -rf "$WORK/mmcv-$MMCV_VERSION"
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/mmcv-$MMCV_VERSION"
if [ "$CXX_STD" != c++17 ]; then
  # mmcv passes -std=c++14 (torch <= 1.12) or -std=c++17 to gcc and nvcc; one standard for both.
  sed -i -e "s/'-std=c++14'/'-std=$CXX_STD'/g" -e "s/'-std=c++17'/'-std=$CXX_STD'/g" "$SRC/setup.py"
  say "setup.py now passes: $(grep -o "'-std=c++[0-9]*'" "$SRC/setup.py" | sort | uniq -c | tr '\n' ' ')"
fi

# --- build ---------------------------------------------------------------------------------------------
# No build isolation: the isolated build would see no torch and produce mmcv without ops. --no-cache-dir:
# pip's wheel cache may hold an mmcv of the same version built without CUDA.
START=$(date +%s)
(cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps \
   --no-cache-dir --force-reinstall .)
say "mmcv $MMCV_VERSION built and installed in $(( $(date +%s) - START )) s"

# --- checks --------------------------------------------------------------------------------------------
EXT=$(cd / && "$PY" -c "import mmcv._ext; print(mmcv._ext.__file__)") || die "import mmcv._ext fails"
FATBIN_HEX=$(objdump -h "$EXT" | awk '$2 == ".nv_fatbin" {print $3}')
FATBIN=$((16#${FATBIN_HEX:-0}))
[ "$FATBIN" -gt 0 ] || die "$EXT has no CUDA fat binary (.nv_fatbin): built without CUDA"
LAUNCHERS=$(nm -D --defined-only "$EXT" | grep -c 'CUDAKernelLauncher' || true)
[ "$LAUNCHERS" -gt 0 ] || die "$EXT exports no *CUDAKernelLauncher symbols: built without CUDA"
say "ok: $EXT imports; CUDA fat binary $((FATBIN / 1024)) KiB; $LAUNCHERS CUDA kernel launchers"
