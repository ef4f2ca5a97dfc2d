# defense-cli: `make run` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast ui bench clean

install: $(STAMP)

# The venv is (re)built when pyproject.toml changes. torch>=2.14 from PyPI is the CUDA build; it
# runs on CPU too. pip builds every sdist in its own isolated environment with a current setuptools
# (antlr4-python3-runtime, needed by hydra-core, is published only as an sdist): a fresh venv's
# setuptools 65 has no bdist_wheel, so the project is never built with --no-build-isolation.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[dev]"
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
