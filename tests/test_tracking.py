"""MLflow tracking: a failed or interrupted run is marked so, with the error."""

from __future__ import annotations

import pytest

from defense_cli.config import compose
from defense_cli.tracking import Tracker, flatten, tracking_uri


def _tracker(home):
    return Tracker(f"sqlite:///{home / 'mlflow.db'}", "defense-cli")


def test_exception_marks_the_run_failed_with_the_error(home):
    tracker = _tracker(home)
    with pytest.raises(RuntimeError):
        with tracker.run("x", {"stage": "run"}) as run:
            raise RuntimeError("boom in the middle")
    stored = tracker.client.get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert "boom in the middle" in stored.data.tags["error"]


def test_interrupt_marks_the_run_killed(home):
    tracker = _tracker(home)
    with pytest.raises(KeyboardInterrupt):
        with tracker.run("x", {}) as run:
            raise KeyboardInterrupt
    assert tracker.client.get_run(run.run_id).info.status == "KILLED"


def test_failed_child_marks_its_sweep_parent_failed(home):
    tracker = _tracker(home)
    parent = tracker.client.create_run(tracker.experiment_id).info.run_id
    with pytest.raises(ValueError):
        with tracker.run("child", {}, parent_run_id=parent):
            raise ValueError("bad")
    assert tracker.client.get_run(parent).info.status == "FAILED"


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose([f"paths.home={tmp_path}"])
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere.db")
    assert tracking_uri(cfg) == "sqlite:////elsewhere.db"
    cfg = compose([f"paths.home={tmp_path}", "mlflow.tracking_uri=sqlite:////explicit.db"])
    assert tracking_uri(cfg) == "sqlite:////explicit.db"


def test_flatten_gives_dotted_keys():
    assert flatten({"attack": {"eps": 0.1, "norm": "linf"}, "seed": 3}) == {
        "attack.eps": "0.1", "attack.norm": "linf", "seed": "3"}


def test_every_run_records_its_environment(home):
    import torch

    tracker = _tracker(home)
    with tracker.run("x", {"stage": "run"}) as run:
        pass
    stored = tracker.client.get_run(run.run_id)
    assert stored.data.tags["env.torch"] == torch.__version__.split("+")[0] or \
        stored.data.tags["env.torch"] == torch.__version__
    assert stored.data.tags["env.device"] in ("cpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    assert stored.data.tags["git_dirty"] in ("true", "false", "unknown")
    assert stored.data.tags["pid"].isdigit()
    path = tracker.client.download_artifacts(run.run_id, "environment.txt", str(home))
    text = open(path).read()
    assert "\ntorch==" in text and "\nmlflow==" in text


def test_the_ui_view_shows_columns_that_runs_have(home):
    import json

    from defense_cli.tracking import RUNS_TABLE_COLUMNS, RUNS_VIEW_KEY, runs_table_url

    tracker = _tracker(home)
    experiment = tracker.open_on_runs()
    tags = tracker.client.get_experiment(experiment).tags
    view = json.loads(tags[f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"])
    assert "metrics.`robust_accuracy`" in view["selectedColumns"]
    params = {name for kind, name in RUNS_TABLE_COLUMNS if kind == "params"}
    assert params <= set(flatten(compose([])))               # every param column is a logged param
    assert runs_table_url("http://h:1", experiment).endswith(f"/runs?viewStateShareKey={RUNS_VIEW_KEY}")
