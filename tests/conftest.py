"""Shared fixtures: a project home with a ready MLflow SQLite store, and the CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its migrations applied once (about 2 s), to be copied."""
    from defense_cli.tracking import Tracker

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    Tracker(f"sqlite:///{path}", "defense-cli")
    return path


@pytest.fixture
def home(tmp_path, empty_store) -> Path:
    """A fresh project home (MLflow store + cache) for one test."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """A cache shared by the end-to-end tests, so the small classifier is trained once."""
    return tmp_path_factory.mktemp("cache")


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `defense-cli ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "defense_cli.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def runs_in(home: Path):
    """All runs of the project store under `home`, as MLflow Run objects."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def invoke_cli(*args: str):
    """Run `defense-cli ARGS` in this process (no import cost); returns click's Result."""
    from typer.testing import CliRunner

    from defense_cli.cli import app

    return CliRunner().invoke(app, list(args))
