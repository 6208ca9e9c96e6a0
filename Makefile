# Two entry points, as the README says: `make demo` (train, evaluate, export, serve) and `make test`.
# Both create .venv from scratch when it is missing or setup.cfg changed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2
# The offline default: the shared Omniglot copy beside the repository. The library never looks
# for it; this Makefile passes it in (the demo's flag; the tests' environment variable).
KERAS_META_OMNIGLOT_DIR ?= $(abspath ../shared/data/omniglot)
export KERAS_META_OMNIGLOT_DIR

.PHONY: venv demo test test-all test-fast bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m trainers.demo --model_dir=runs/demo --omniglot_source_dir=$(KERAS_META_OMNIGLOT_DIR)

# The layering contracts first (seconds), then the tests in two processes (pytest-xdist),
# a test file per process at a time (files with slow tests first: tests/conftest.py). Most of a
# test's time is single-threaded tracing and TensorFlow starting in child processes, so two
# processes keep two cores busy (three were 4% faster, not more: the cores are the limit).
# `make test` (CI) leaves out the tests marked heavy: second end-to-end runs of paths that other
# tests run end to end. With them the suite took 30-32 minutes on 2-core machines (AVX2 AMD
# EPYC; AVX-512 Xeon on 2026-12-03); without them 22 minutes on that Xeon (CI: 24.5 minutes,
# installs included). `make test-all` runs everything.
# PYTEST_WORKERS=0 runs them in this process (for a debugger, or to read a
# failure's output in order).
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -q -m "not heavy" $(PYTEST_PARALLEL)

test-all: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -q $(PYTEST_PARALLEL)

test-fast: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -q -m "not slow and not heavy" $(PYTEST_PARALLEL)

clean:
	rm -rf runs .pytest_cache
