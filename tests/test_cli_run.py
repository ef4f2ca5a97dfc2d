"""`defense-cli run` and `-m` end to end on a small subset, asserting on the MLflow store."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, runs_in

DATA = ["dataset.limit=48", "train.epochs=1", "eval_batch_size=24"]
SMALL = [*DATA, "attack.steps=5"]

pytestmark = pytest.mark.slow


def test_run_logs_params_tags_metrics_and_artifacts(home, shared_cache):
    result = run_cli("run", *SMALL, f"paths.home={home}", f"paths.cache_dir={shared_cache}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "robust_accuracy" in result.stdout
    (run,) = runs_in(home)
    assert run.info.status == "FINISHED"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["attack.steps"] == "5" and params["dataset.limit"] == "48"
    assert {tags[k] for k in ("dataset", "model", "defense", "attack", "threat_model")} == {
        "mnist5k", "small_cnn", "none", "pgd", "white_box"}
    assert tags["git_commit"]
    assert metrics["n_images"] == 48
    for name in ("clean_accuracy", "defended_clean_accuracy", "robust_accuracy", "attack_success_rate"):
        assert 0.0 <= metrics[name] <= 1.0
    # with no defense, defended and undefended numbers coincide and PGD stays in its eps ball
    assert metrics["robust_accuracy"] == metrics["undefended_robust_accuracy"]
    assert metrics["mean_linf"] <= 0.1 + 1e-6
    assert metrics["gradient_evaluations"] == (48 - metrics["broken_clean"]) * 5   # only the correct points are attacked
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "samples.png"} <= artifacts
    logged = json.loads(open(client.download_artifacts(run.info.run_id, "metrics.json", str(home))).read())
    assert logged["robust_accuracy"] == pytest.approx(metrics["robust_accuracy"])


def test_second_run_reuses_the_cached_classifier(home, shared_cache):
    for _ in range(2):
        result = run_cli("run", *DATA, "attack=none", f"paths.home={home}", f"paths.cache_dir={shared_cache}",
                         cwd=home)
        assert result.returncode == 0, result.stderr[-3000:]
    hits = sorted(run.data.tags["classifier_cache_hit"] for run in runs_in(home))
    assert hits[-1] == "True"


def test_multirun_makes_one_parent_and_four_children(home, shared_cache):
    result = run_cli("run", "-m", "defense=none,jpeg", "attack.eps=0.02,0.05", *SMALL,
                     f"paths.home={home}", f"paths.cache_dir={shared_cache}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_in(home)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4
    combos = {(r.data.params["defense.name"], r.data.params["attack.eps"]) for r in children}
    assert combos == {("none", "0.02"), ("none", "0.05"), ("jpeg", "0.02"), ("jpeg", "0.05")}
    assert all(r.info.status == "FINISHED" for r in children)
    names = {r.info.run_name for r in children}  # named by what differs between the jobs
    assert names == {f"mnist5k-small_cnn-{d}-pgd-white_box defense={d} attack.eps={e}"
                     for d in ("none", "jpeg") for e in ("0.02", "0.05")}


def test_cfg_job_prints_the_composed_config_without_running(home):
    result = run_cli("run", "defense=jpeg", "defense.quality=30", "--cfg", "job", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "quality: 30" in result.stdout
    assert runs_in(home) == []


def test_train_command_reports_test_accuracy(home, shared_cache):
    result = run_cli("train", "train.epochs=1", f"paths.home={home}", f"paths.cache_dir={shared_cache}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_in(home)
    assert run.data.tags["stage"] == "train"
    assert run.data.metrics["test_accuracy"] > 0.5   # one epoch of small_cnn on mnist5k
    assert run.data.metrics["n_images"] == 1000


def test_list_and_help_describe_every_command(home):
    listing = run_cli("list", "defense", cwd=home)
    assert listing.returncode == 0 and "jpeg" in listing.stdout and "JPEG compression" in listing.stdout
    for command in ("run", "train", "list", "ui", "bench"):
        shown = run_cli(command, "--help", cwd=home)
        assert shown.returncode == 0, shown.stderr
        assert "Example" in shown.stdout or command == "bench"


def test_a_float_range_sweep_logs_the_values_as_written(home, shared_cache):
    result = run_cli("run", "-m", "attack.eps=range(0.05,0.2,0.05)", *DATA, "attack.steps=1", "dataset.limit=8",
                     f"paths.home={home}", f"paths.cache_dir={shared_cache}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    children = [r for r in runs_in(home) if r.data.tags.get("sweep") != "parent"]
    assert sorted(r.data.params["attack.eps"] for r in children) == ["0.05", "0.1", "0.15"]
    assert {r.info.run_name.split(" ")[-1] for r in children} == {"attack.eps=0.05", "attack.eps=0.1", "attack.eps=0.15"}
