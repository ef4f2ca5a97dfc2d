"""The runner wires EOT, per-draw accuracies and the validity checks into MLflow (one small run)."""

from __future__ import annotations

import pytest
import torch

from defense_cli.config import compose
from defense_cli.defenses.base import Defense


class NoisyDefense(Defense):
    """A random defense for the run below (imported by Hydra from this module)."""

    randomized = True

    def transform(self, images, generator):
        noise = torch.rand(images.shape, generator=generator, device=images.device)
        return (images + 0.3 * noise).clamp(0, 1)


@pytest.mark.slow  # one MLflow store (SQLite migrations) and a 16-image run of an untrained model
def test_a_random_defense_without_eot_is_flagged_and_its_draws_are_logged(tmp_path, capsys):
    from defense_cli.tasks.run import run_experiment
    from defense_cli.tracking import Tracker

    cfg = compose([f"paths.home={tmp_path}", "train.epochs=0", "dataset.limit=16", "attack.steps=2",
                   f"defense._target_={__name__}.NoisyDefense", "threat_model.eot_samples=1",
                   "threat_model.n_draws=3", "checks.strength.enabled=true", "checks.strength.n_images=8",
                   "checks.unbounded.enabled=true", "checks.unbounded.n_images=8", "num_samples_grid=0"])
    metrics = run_experiment(cfg)
    assert metrics["n_draws"] == 3
    assert metrics["robust_accuracy_worst_draw"] <= metrics["robust_accuracy_mean_over_draws"]
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", cfg.mlflow.experiment_name)
    (run,) = tracker.client.search_runs([tracker.experiment_id])
    tags = run.data.tags
    assert tags["check.random_without_eot"].startswith("FLAG")
    assert {"check.transfer_stronger", "check.strength", "check.unbounded"} <= set(tags)
    history = tracker.client.get_metric_history(run.info.run_id, "robust_accuracy_draw")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert "FLAG random_without_eot" in capsys.readouterr().out
