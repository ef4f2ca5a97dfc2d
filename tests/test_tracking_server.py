"""`defense-cli server`: a real MLflow tracking server on 127.0.0.1 (sweeps and resume over HTTP: see
test_launchers.py); an unreachable one fails in seconds, and one that goes away fails the job and
says where its results are."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import run_cli, start_server
from defense_cli.errors import TrackingUnavailable
from defense_cli.tracking import RESULTS_FILE, Tracker

pytestmark = pytest.mark.slow


def test_an_unreachable_server_fails_in_seconds_before_any_work(tmp_path):
    start = time.monotonic()
    result = run_cli("run", "mlflow.tracking_uri=http://127.0.0.1:1", f"paths.home={tmp_path}", cwd=tmp_path,
                     timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 3
    assert "mlflow.tracking_uri='http://127.0.0.1:1' does not answer" in result.stderr
    assert "defense-cli server" in result.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s"                 # MLflow's own retries take > 120 s
    assert not (tmp_path / ".defense_cli_cache").exists()          # the data was not even loaded


def test_a_server_that_goes_away_fails_the_run_and_names_where_results_are(tmp_path, empty_store):
    process, uri = start_server(tmp_path, empty_store)
    tracker = Tracker(uri, "defense-cli")
    with pytest.raises(TrackingUnavailable) as caught:
        with tracker.run("x", {"stage": "run"}) as run:
            process.send_signal(signal.SIGTERM)                 # the server stops mid-run
            assert process.wait(timeout=60) == 128 + signal.SIGTERM
            run.metrics({"robust_accuracy": 0.5})
    message = str(caught.value)
    assert f"the tracking store {uri} stopped answering" in message and RESULTS_FILE in message
    port = uri.rsplit(":", 1)[1]
    leftover = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""                         # SIGTERM stopped the server's whole group
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{uri}/health", timeout=5)


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_the_lookups_that_read_other_runs_answer_alike_over_sqlite_and_http(store, request, home):
    """Resume and `table` (config hash), the sweep summary (children, reused links) and the
    transfer check (runs of the same setting) read other runs: each lookup, on either store."""
    from defense_cli.run_search import newest_finished_run, runs_by_hash, sweep_jobs

    uri = request.getfixturevalue("tracking_server") if store == "server" else f"sqlite:///{home / 'mlflow.db'}"
    experiment = f"lookups-{store}"
    tracker = Tracker(uri, experiment)
    with tracker.run("parent", {"sweep": "parent"}) as parent:
        with tracker.run("job a=1", {"stage": "run", "config_hash": "h1", "setting": "s1"}, parent.run_id) as job:
            job.metrics({"robust_accuracy": 0.25})
        with tracker.run("old a=2", {"stage": "run", "config_hash": "h2", "setting": "s1"}) as old:
            old.metrics({"robust_accuracy": 0.5})
        tracker.client.set_tag(parent.run_id, f"reused.{old.run_id}", "old a=2")
    assert newest_finished_run(uri, experiment, "h1")["run_id"] == job.run_id
    assert newest_finished_run(uri, experiment, "h3") is None
    assert runs_by_hash(uri, experiment, ["h1", "h2", "h3"]) == {"h1": job.run_id, "h2": old.run_id}
    found = tracker.finished_runs({"setting": "s1"}, "robust_accuracy")
    assert {run_id: accuracy for run_id, (_, accuracy) in found.items()} == {job.run_id: 0.25, old.run_id: 0.5}
    jobs = sweep_jobs(uri, experiment, parent.run_id)
    assert set(zip(jobs["run_id"], jobs["reused"])) == {(job.run_id, False), (old.run_id, True)}
