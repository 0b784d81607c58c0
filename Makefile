# mmnorm — two commands for a new user:
#   make test   install the pinned stack into ./.venv (once) and run the test suite
#   make demo   run the embedded synthetic GTA5-like -> Cityscapes-like experiment
# and for contributors:
#   make lint   flake8 + isort + yapf (settings in setup.cfg), as CI runs them
#
# Overridable: PYTHON, VENV, TORCH_SPEC (e.g. a CUDA build on a GPU box:
#   make test TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'),
#   PYTEST_ARGS (e.g. PYTEST_ARGS='-m "slow or not slow"' runs the slow cases too).

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

.PHONY: install test test-all demo lint clean-venv

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
