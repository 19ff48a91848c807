# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv it needs (Python 3.11 preferred) and installs the package.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: demo test bench clean

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/medprep demo --output_dir $(DEMO_OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --durations=15 tests

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
