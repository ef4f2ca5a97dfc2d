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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(uri: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Wait until the tracking server at `uri` answers /health (MLflow takes a while to start)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the tracking server exited"
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{uri} did not answer within {timeout_s} s")


def start_server(tmp_path: Path, empty_store: Path) -> tuple[subprocess.Popen, str]:
    """`defense-cli server` on a free loopback port over a fresh SQLite store; (process, its URI)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "defense_cli.cli", "server", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    assert process.stdout.readline().startswith("MLflow tracking server for sqlite:///")
    assert process.stdout.readline().strip() == f"export MLFLOW_TRACKING_URI={uri}"
    wait_for_health(uri, process)
    return process, uri


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory, empty_store):
    """A real MLflow tracking server on 127.0.0.1, shared by the tests that sweep over HTTP."""
    process, uri = start_server(tmp_path_factory.mktemp("server"), empty_store)
    yield uri
    process.terminate()
    process.wait(timeout=60)


def runs_at(uri: str, experiment: str = "defense-cli"):
    """All runs of `experiment` in the store at `uri`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def sweep_runs(runs, sweep_dir: Path):
    """(parent, children) of the sweep whose folder is `sweep_dir`."""
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"
                 and r.data.tags.get("sweep_dir") == str(sweep_dir.resolve())]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children
