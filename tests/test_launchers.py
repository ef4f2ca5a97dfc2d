"""Hydra's Ray and submitit launchers and the Optuna sweeper run `defense-cli run -m`: every job is
a child of the sweep's parent run, over a real tracking server on 127.0.0.1 (the extras
`defense-cli[ray]`, `[slurm]`, `[optuna]`; skipped where they are not installed)."""

from __future__ import annotations

import pytest
import yaml

from conftest import run_cli, runs_at, runs_in, sweep_runs

pytestmark = pytest.mark.slow

SWEEP = ["run", "-m", "defense=none,jpeg", "attack.eps=0.02,0.05", "dataset.limit=24", "train.epochs=1",
         "eval_batch_size=24", "attack.steps=2", "num_samples_grid=0"]
LAUNCHERS = {
    "ray": ("hydra_plugins.hydra_ray_launcher",
            ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.remote.num_cpus=1"]),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher",
                       ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20"]),
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_2x2_sweep_under_the_launcher_nests_four_finished_children(launcher, tracking_server, tmp_path,
                                                                     shared_cache):
    plugin, overrides = LAUNCHERS[launcher]
    pytest.importorskip(plugin)
    sweep_dir = tmp_path / "sweep"
    result = run_cli(*SWEEP, *overrides, f"mlflow.tracking_uri={tracking_server}", f"paths.home={tmp_path}",
                     f"paths.cache_dir={shared_cache}", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(runs_at(tracking_server), sweep_dir)
    assert parent.info.status == "FINISHED"
    assert sorted((r.data.params["defense.name"], r.data.params["attack.eps"]) for r in children) == [
        ("jpeg", "0.02"), ("jpeg", "0.05"), ("none", "0.02"), ("none", "0.05")]
    assert all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["pid"] for r in children} - {parent.data.tags.get("pid")}) >= 1


def test_an_optuna_search_over_splic_logs_its_trials_as_children(home, shared_cache):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = home / "sweep"
    result = run_cli("run", "-m", "hydra/sweeper=splic_search", "hydra.sweeper.n_trials=3", "defense=splic",
                     "search.min_clean_accuracy=0.3",
                     "dataset.limit=16", "train.epochs=1", "eval_batch_size=16", "attack.steps=1",
                     "threat_model.eot_samples=1", "threat_model.n_draws=2", "num_samples_grid=0",
                     f"paths.home={home}", f"paths.cache_dir={shared_cache}", f"hydra.sweep.dir={sweep_dir}",
                     cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, trials = sweep_runs(runs_in(home), sweep_dir)
    assert parent.info.status == "FINISHED" and len(trials) == 3
    assert all(r.info.status == "FINISHED" for r in trials)
    for trial in trials:
        assert int(trial.data.params["defense.rank"]) in range(2, 16)
        assert 0.3 <= float(trial.data.params["defense.anchor_fraction"]) <= 0.8
        metrics = trial.data.metrics
        worst = metrics.get("robust_accuracy_every_draw", metrics["robust_accuracy"])
        floor_met = metrics["defended_clean_accuracy"] >= 0.3
        assert metrics["search_score"] == pytest.approx(worst if floor_met else worst - 1.0)
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(r.data.metrics["search_score"] for r in trials))
