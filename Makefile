# defense-cli: `make run` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast ui bench clean

install: $(STAMP)

# The venv is (re)built when pyproject.toml changes. torch>=2.14 from PyPI is the CUDA build; it
# runs on CPU too (see shared/GUIDE.md section 1).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet hatchling editables
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/defense-cli run $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

ui: install
	$(BIN)/defense-cli ui

bench: install
	$(BIN)/defense-cli bench defenses

clean:
	rm -rf outputs .pytest_cache
