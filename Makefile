# mmnorm — two commands for a new user:
#   make test   install the pinned stack into ./.venv (once) and run the test suite
#   make demo   run the embedded synthetic GTA5-like -> Cityscapes-like experiment
# and for contributors:
#   make lint   flake8 + isort + yapf (settings in setup.cfg), as CI runs them
#
#   make gpu-stack   a CUDA stack in ./.venv-gpu: CUDA torch + mmcv compiled with its CUDA ops
#                    (tens of minutes; not part of make test or CI); make test-gpu runs the tests there
#   make gpu-wheels  what tools/gpu_check.py carries to a GPU machine without network (.gpu-wheels)
#
# Overridable: PYTHON, VENV, TORCH_SPEC, PYTEST_ARGS (e.g. PYTEST_ARGS='-m "slow or not slow"' runs the
# slow cases too); for gpu-stack: GPU_VENV, TORCH_SPEC (default there: torch==2.14.1, a CUDA 13.0 build),
# CUDA_HOME, TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
MMCV_SPEC   ?= mmcv==2.1.0
PYTEST_ARGS ?=
NPROC       := $(shell nproc 2>/dev/null || echo 2)

PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip
STAMP := $(VENV)/.mmnorm-installed
LINT_STAMP := $(VENV)/.mmnorm-lint-installed
LINT_PATHS := mmnorm tools tests configs setup.py
# not configs/: yapf reads mmengine's {{_base_.x}} placeholders as set literals and may split them
YAPF_PATHS := mmnorm tools tests setup.py

.PHONY: install test test-all demo lint clean-venv gpu-stack gpu-wheels test-gpu

install: $(STAMP)

# One stamp for the whole stack: re-run only when the pins or the package metadata change.
$(STAMP): requirements/stack.txt requirements/tests.txt setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Build tools first, in a call of their own: torch 2.13 needs setuptools>=77.0.3, mmcv's
	# setup.py and mmengine's config loader still import pkg_resources (gone in setuptools 82).
	$(PIP) install 'setuptools>=77.0.3,<80.9' wheel ninja
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install mmengine==0.10.7
	# mmcv with its compiled ops, built against the torch above (no build isolation, or the
	# isolated build sees no torch and silently produces mmcv without ops).
	MMCV_WITH_OPS=1 FORCE_CUDA=$${FORCE_CUDA:-0} MAX_JOBS=$(NPROC) CFLAGS="-DNDEBUG -O3 -fwrapv" \
	  $(PIP) install --no-build-isolation $(MMCV_SPEC)
	# pip's wheel cache may hold an mmcv built without ops: verify, rebuild from source if so.
	$(PY) -c "import mmcv._ext" 2>/dev/null || ( \
	  MMCV_WITH_OPS=1 FORCE_CUDA=$${FORCE_CUDA:-0} MAX_JOBS=$(NPROC) CFLAGS="-DNDEBUG -O3 -fwrapv" \
	  $(PIP) install --no-build-isolation --no-cache-dir --force-reinstall --no-deps $(MMCV_SPEC) && \
	  $(PY) -c "import mmcv._ext" )
	$(PIP) install -r requirements/stack.txt -r requirements/tests.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import mmcv._ext, mmseg, mmdet, mmnorm; print('mmnorm', mmnorm.__version__, 'stack ready')"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything, slow cases included.
test-all: $(STAMP)
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# Lint tools only (no torch needed): a fresh clone can lint before the stack is installed.
$(LINT_STAMP): requirements/lint.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements/lint.txt
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(PY) -m flake8 $(LINT_PATHS)
	$(PY) -m isort --check-only --diff $(LINT_PATHS)
	$(PY) -m yapf --diff --recursive $(YAPF_PATHS)

demo: $(STAMP)
	$(PY) tools/demo.py $(if $(FAST),--fast) $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)

# CUDA stack in a venv of its own (the CPU .venv stays as it is). tools/build_mmcv_cuda.sh decides the
# C++ standard and the CUDA library include path from the torch and toolkit it finds, builds mmcv with
# FORCE_CUDA=1 and checks that mmcv._ext imports and holds CUDA kernels. Built end to end on
# 2026-12-06 with torch 2.14.1+cu130, nvcc 13.0, gcc 12 (README, "GPU"). Its own stamp: the CPU install recipe
# (make test VENV=...) must never run over it (it would put back the CPU torch).
GPU_VENV             ?= .venv-gpu
TORCH_CUDA_ARCH_LIST ?= 9.0
gpu-stack: TORCH_SPEC = torch==2.14.1
gpu-stack:
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install 'setuptools>=77.0.3,<80.9' wheel ninja
	$(GPU_VENV)/bin/python -m pip install $(TORCH_SPEC)
	$(GPU_VENV)/bin/python -m pip install mmengine==0.10.7
	TORCH_CUDA_ARCH_LIST='$(TORCH_CUDA_ARCH_LIST)' MAX_JOBS=$${MAX_JOBS:-$(NPROC)} \
	  tools/build_mmcv_cuda.sh $(GPU_VENV)/bin/python
	$(GPU_VENV)/bin/python -m pip install -r requirements/stack.txt -r requirements/tests.txt
	$(GPU_VENV)/bin/python -m pip install --no-build-isolation --no-deps -e .
	$(GPU_VENV)/bin/python -c "import mmcv._ext, mmseg, mmdet, mmnorm, torch; \
	  print('mmnorm', mmnorm.__version__, 'CUDA stack ready: torch', torch.__version__)"
	touch $(GPU_VENV)/.mmnorm-gpu-installed

# The default test run against the CUDA stack (it runs on a CPU-only machine too).
test-gpu:
	@test -f $(GPU_VENV)/.mmnorm-gpu-installed || { echo "no CUDA stack in $(GPU_VENV): make gpu-stack"; exit 2; }
	$(GPU_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The wheels (Python 3.12, x86-64) and mmcv's source that tools/gpu_check.py --setup installs on
# the GPU machine's image: see requirements/gpu_check.txt. About 10 MiB.
GPU_WHEELS ?= .gpu-wheels
# pip prepares the sdist's metadata: without build isolation, with a setuptools that still has
# pkg_resources (mmcv's setup.py imports it).
gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q 'setuptools>=77.0.3,<80.9' wheel
	$(PIP) download --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	  -d $(GPU_WHEELS) -r requirements/gpu_check.txt
	$(PIP) download --no-deps --no-build-isolation --no-binary=:all: $(MMCV_SPEC) -d $(GPU_WHEELS)
