# defense-cli: `make run` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LAUNCHERS_STAMP := $(VENV)/.installed-launchers

.PHONY: install install-launchers run test test-fast ui bench clean

install: $(STAMP)

# The distributed launchers (Ray, submitit/SLURM, Optuna) are optional extras for users; the test
# suite runs their sweeps for real, so `make test` installs them too.
install-launchers: $(LAUNCHERS_STAMP)

# The venv is (re)built when pyproject.toml changes. torch>=2.14 from PyPI is the CUDA build; it
# runs on CPU too. pip builds every sdist in its own isolated environment with a current setuptools
# (antlr4-python3-runtime, needed by hydra-core, is published only as an sdist): a fresh venv's
# setuptools 65 has no bdist_wheel, so the project is never built with --no-build-isolation.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(LAUNCHERS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,ray,slurm,optuna]"
	touch $(LAUNCHERS_STAMP)

run: install
	$(BIN)/defense-cli run $(ARGS)

test: install-launchers
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install-launchers
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

ui: install
	$(BIN)/defense-cli ui

bench: install
	$(BIN)/defense-cli bench defenses

clean:
	rm -rf outputs .pytest_cache
