# detserve: `make up` runs it, `make test` runs every test. Both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEV    := $(VENV)/.dev-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: up test lint bench clean mutate

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEV): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

up: $(STAMP)
	$(VENV)/bin/detserve up

test: $(DEV)
	$(PY) -m ruff check shared services tests tools bench
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(DEV)
	$(PY) -m ruff check shared services tests tools bench
	$(PY) -m mypy

# needs wrk (apt-get install wrk) and the train extra (torch, CPU build) for the YOLOv8n-sized model;
# the ceiling is bench/reference.py, an independent pipeline; --reference also measures it in a
# plain Flask app (the floor); bench/steps.py alone times both pipelines step by step
bench: $(DEV)
	$(PY) -m pip install --quiet -e ".[dev,train]"
	$(PY) bench/run.py --reference

clean:
	rm -rf $(VENV) .pytest_cache .mutate

# Mutation testing (cosmic-ray) of the modules that decide answers and state, each against its fast
# tests, on two lanes; not run by CI (about 26 min on two idle cores). Report: .mutate/report.txt
mutate: $(DEV)
	$(PY) tests/mutate/run.py
