"""`defense-cli compress` end to end on small_cnn / mnist5k, checked through the MLflow store;
then `run` on the compressed cache entry."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SMALL = ["dataset=mnist5k", "model=small_cnn", "dataset.limit=64", "train.epochs=1", "device=cpu"]
COMPRESS = ["compress.images=32", "compress.samples=3000", "compress.finetune.epochs=1",
            "compress.latency.batch_sizes=[1,4]", "compress.latency.repeats=1", "compress.latency.warmup=0"]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its migrations applied once, copied into each test's home."""
    from defense_cli.tracking import Tracker

    folder = tmp_path_factory.mktemp("store")
    previous = os.getcwd()
    os.chdir(folder)  # the experiment's artifact root (./mlruns) is fixed where it is created
    try:
        Tracker(f"sqlite:///{folder / 'mlflow.db'}", "defense-cli")
    finally:
        os.chdir(previous)
    return folder / "mlflow.db"


@pytest.fixture
def home(tmp_path, empty_store, monkeypatch) -> Path:
    """A fresh project home, also the working directory (Hydra outputs, MLflow artifacts)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    from typer.testing import CliRunner

    from defense_cli.cli import app

    return CliRunner().invoke(app, list(args))


def runs(home: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_compress_logs_layers_accuracy_cost_and_run_uses_the_entry(home):
    result = invoke("compress", *SMALL, *COMPRESS, f"paths.home={home}", "compress.rank=0.25")
    assert result.exit_code == 0, result.output
    client, (run,) = runs(home)
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and tags["compress_method"] == "l1_lrar"
    # small_cnn on 28x28: conv2 is 32 -> 64 filters, 3x3, stride 2 -> 14x14; rank 1/4 keeps 16 (eq. 2.7)
    assert metrics["layer.conv2.rank"] == 16
    assert metrics["layer.conv2.macs_before"] == 64 * 14 * 14 * 9 * 32
    assert metrics["layer.conv2.macs_after"] == 16 * 14 * 14 * 9 * 32 + 64 * 14 * 14 * 16
    assert 0 < metrics["layer.conv2.linear_error"] < 1 and 0 < metrics["layer.conv2.nonlinear_error"] < 1.5
    residuals = [m.value for m in client.get_metric_history(run.info.run_id, "solver_residual.conv2")]
    assert len(residuals) > 10 and residuals[-1] < residuals[0]
    for key in ("accuracy_top1_original", "accuracy_top5_original", "accuracy_top1_decomposed",
                "accuracy_top1_finetuned", "params_compressed", "latency_ms_cpu_b1_compressed", "speedup_cpu_b4"):
        assert key in metrics, key
    assert metrics["params_compressed"] < metrics["params_original"]
    assert metrics["flops_compressed"] < metrics["flops_original"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/error.png", "plots/macs.png", "plots/residual.png"} <= artifacts
    entry = Path(tags["compressed_entry"])
    assert entry.is_file()

    result = invoke("run", *SMALL, f"paths.home={home}", "model=compressed", f"model.entry={entry}",
                    "attack=fgsm", "defense=none")
    assert result.exit_code == 0, result.output
    _, (_, used) = runs(home)
    assert used.data.tags["model"] == "compressed"
    assert used.data.metrics["clean_accuracy"] == pytest.approx(metrics["accuracy_top1_finetuned"])


def test_compress_rejects_a_bad_rank_and_an_unknown_layer(home):
    result = invoke("compress", *SMALL, f"paths.home={home}", "compress.rank=1.5")
    assert result.exit_code == 2 and "compress.rank=1.5" in result.output
    result = invoke("compress", *SMALL, *COMPRESS, f"paths.home={home}", "compress.layers=[conv7]",
                    "train.epochs=0")
    assert result.exit_code == 2 and "conv7" in result.output
