"""`defense-cli ui` serves the project's MLflow store on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _search_experiments(port: int) -> list[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 10}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return [e["name"] for e in json.load(response)["experiments"]]


def _wait_for_experiments(port: int, seconds: int) -> list[str]:
    """The experiment names the UI on `port` serves, once it answers (starting it takes a while)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            return _search_experiments(port)
        except OSError:
            continue
    pytest.fail(f"the MLflow UI did not answer within {seconds} s")


def test_ui_serves_the_project_store(home):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "defense_cli.cli", "ui", "--port", str(port),
                               f"paths.home={home}"], cwd=home, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        names = _wait_for_experiments(port, 180)
        assert "defense-cli" in names
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_ui_opens_on_the_runs_table_and_sigterm_stops_its_server(home):
    from mlflow.tracking import MlflowClient

    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "defense_cli.cli", "ui", "--port", str(port), f"paths.home={home}"],
                          cwd=home, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        _wait_for_experiments(port, 420)
        experiment = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_experiment_by_name("defense-cli")
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        ui.send_signal(signal.SIGTERM)  # to defense-cli alone, as a job scheduler or `kill` does
        assert ui.wait(timeout=120) == 0
        assert f"#/experiments/{experiment.experiment_id}/runs" in ui.stdout.read()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                _search_experiments(port)
            except OSError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the mlflow server still answers 60 s after defense-cli ui got SIGTERM")
    finally:
        if ui.poll() is None:
            ui.kill()
