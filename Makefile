# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv it needs (Python 3.11 preferred) and installs the package.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: demo test lint bench clean

# The demo needs the package and its `demo` extra (tifffile writes its sample slides); tests, lint and
# benchmarks add the `test` extra (torch, transformers, datasets, grain, hypothesis…).
$(BIN)/.runtime: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $@

$(BIN)/.installed: $(BIN)/.runtime
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.runtime
	$(BIN)/medprep demo --output_dir $(DEMO_OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --durations=15 tests

# ruff (lint and import order) over the repo, then mypy as pyproject.toml configures it: strict on
# medprep.transforms, medprep.schemas and the public API. mypy finds modules by folder, so the
# top-level folders are linked under build/mypy/medprep/ by the names they install as.
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/mypy && mkdir -p build/mypy/medprep
	for f in medprep/* transforms schemas pipelines; do \
	  [ "$${f##*/}" = __pycache__ ] || ln -s "$(CURDIR)/$$f" build/mypy/medprep/; done
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
