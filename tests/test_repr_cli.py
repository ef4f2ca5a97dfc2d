"""`defense-cli train train=repr model=convnet` end to end, read back from the MLflow store."""

import pytest
from typer.testing import CliRunner

from defense_cli.cli import app

OVERRIDES = ["train=repr", "model=convnet2", "model.width=4", "train.epochs=4", "train.batch_size=256",
             "train.lr=0.01", "train.repr.s1=1", "train.repr.s2=1", "train.repr.n=1", "dataset.limit=100"]


def test_train_repr_logs_per_epoch_ortho_sum_and_accuracy(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", *OVERRIDES, f"paths.home={tmp_path}"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("defense-cli").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.scheme"] == "repr"

    def history(name):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, name),
                                                  key=lambda m: m.step)]

    ortho = history("epoch_ortho_sum")
    assert [step for step, _ in ortho] == [1, 2, 3, 4]
    assert all(value > 0 for _, value in ortho)
    dropped = [value for _, value in history("epoch_repr_dropped_filters")]
    assert dropped == [0.0, 2.0, 0.0, 0.0]  # round(0.3 * 8 filters) in epoch 2 only
    test_accuracy = history("epoch_test_accuracy")
    assert len(test_accuracy) == 4 and all(0 <= v <= 1 for _, v in test_accuracy)
    assert len(history("epoch_train_loss")) == 4


def test_train_repr_with_bad_p_exits_2_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", *OVERRIDES, "train.repr.p=1.2", f"paths.home={tmp_path}"])
    assert result.exit_code == 2
    assert "train.repr.p=1.2" in result.output
