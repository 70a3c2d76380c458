# The two commands of the README: `make demo` and `make test` (and `make test-fast`, the quick loop).
# All create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint-imports bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so that nothing below pulls a different torch
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/graphc demo

# the layering contracts of ARCHITECTURE.md ([tool.importlinter] in pyproject.toml)
lint-imports: $(STAMP)
	$(BIN)/lint-imports

test: lint-imports
	$(BIN)/python -m pytest

# the quick loop: everything but the slow and the distributed tests (markers in pyproject.toml)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not distributed"

bench: $(STAMP)
	$(BIN)/python benchmarks/trace_zoo.py

clean:
	rm -rf $(VENV) build *.egg-info
