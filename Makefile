# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || $(PYTHON) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup
	bash scripts/demo.sh

test: setup
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast: setup
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

lint: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: setup
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

bench: setup
	bash bench/run_all.sh

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
