"""`defense-cli run -m` under Hydra's basic, Ray and submitit launchers, over a real tracking server
on 127.0.0.1, and under the Optuna sweeper: every job is a child of the sweep's parent run (the
extras `defense-cli[ray]`, `[slurm]`, `[optuna]`; their tests skip where they are not installed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, run_cli, runs_at, runs_in, sweep_runs
from defense_cli.results import search_score
from defense_cli.tracking import RESULTS_FILE

SWEEP = ["run", "-m", "defense=none,jpeg", "attack.eps=0.02,0.05", "dataset.limit=24", "train.epochs=1",
         "eval_batch_size=24", "attack.steps=2", "num_samples_grid=0"]
LAUNCHERS = {
    "basic": (None, []),
    "ray": ("hydra_plugins.hydra_ray_launcher",
            ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.remote.num_cpus=1"]),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher",
                       ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_2x2_sweep_under_the_launcher_nests_four_finished_children(launcher, tracking_server, tmp_path,
                                                                     shared_cache):
    plugin, overrides = LAUNCHERS[launcher]
    if plugin:
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
    assert not (tmp_path / "mlflow.db").exists()                   # nothing went to a local store
    for child in children:                                         # each job also kept its numbers
        kept = _kept_for(sweep_dir, child.info.run_id)
        assert kept["metrics"]["robust_accuracy"] == pytest.approx(child.data.metrics["robust_accuracy"])


@pytest.mark.slow
def test_a_resumed_sweep_over_the_tracking_server_reuses_its_finished_jobs(tracking_server, tmp_path, shared_cache):
    args = [*SWEEP[:2], "defense=none", *SWEEP[3:], f"mlflow.tracking_uri={tracking_server}",
            f"paths.home={tmp_path}", f"paths.cache_dir={shared_cache}"]
    first = run_cli(*args, f"hydra.sweep.dir={tmp_path / 'first'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    _, done = sweep_runs(runs_at(tracking_server), tmp_path / "first")
    resumed = run_cli(*args, "resume=true", f"hydra.sweep.dir={tmp_path / 'second'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 jobs (2 reused)" in resumed.stdout
    parent, children = sweep_runs(runs_at(tracking_server), tmp_path / "second")
    assert children == [] and parent.info.status == "FINISHED"
    assert {key.removeprefix("reused.") for key in parent.data.tags if key.startswith("reused.")} == {
        run.info.run_id for run in done}


def _kept_for(sweep_dir, run_id: str) -> dict:
    """The results.json of the job folder that logged MLflow run `run_id`."""
    (found,) = [data for path in sweep_dir.glob(f"*/{RESULTS_FILE}")
                if (data := json.loads(path.read_text()))["run_id"] == run_id]
    return found


def test_the_search_score_is_the_worst_case_above_the_clean_floor_and_below_every_such_trial_under_it():
    deterministic = {"robust_accuracy": 0.4, "defended_clean_accuracy": 0.9}
    random_defense = {"robust_accuracy": 0.3, "robust_accuracy_every_draw": 0.5, "defended_clean_accuracy": 0.7}
    assert search_score(deterministic, 0.8) == pytest.approx(0.4)
    assert search_score(random_defense, 0.6) == pytest.approx(0.3)      # the per-example worst case, not the final draws alone
    assert search_score(random_defense, 0.8) == pytest.approx(-0.7)     # under the floor
    assert search_score(random_defense, 0.8) < search_score({"robust_accuracy": 0.0,
                                                             "defended_clean_accuracy": 0.8}, 0.8)


@pytest.mark.slow
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
        worst = metrics["robust_accuracy"]
        assert worst <= metrics["robust_accuracy_every_draw"]   # the headline also counts draws during the attack
        floor_met = metrics["defended_clean_accuracy"] >= 0.3
        assert metrics["search_score"] == pytest.approx(worst if floor_met else worst - 1.0)
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(r.data.metrics["search_score"] for r in trials))


@pytest.mark.slow
def test_a_ray_job_stopped_by_sigterm_ends_killed_and_the_resumed_sweep_runs_only_it(home, shared_cache):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep = ["run", "-m", "attack.eps=0.02", "attack.steps=1,150", "dataset.limit=200", "train.epochs=1",
             "num_samples_grid=0", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
             "+hydra.launcher.ray.remote.num_cpus=1", "+hydra.launcher.ray.remote.max_retries=0",
             f"paths.home={home}", f"paths.cache_dir={shared_cache}"]
    process = subprocess.Popen([sys.executable, "-m", "defense_cli.cli", *sweep, f"hydra.sweep.dir={home / 'first'}"],
                               cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slow = _the_slow_job_once_the_other_finished(home, process)
    os.kill(int(slow.data.tags["pid"]), signal.SIGTERM)          # the Ray worker running the job
    process.wait(timeout=300)
    assert process.returncode != 0
    runs = {r.info.run_id: r for r in runs_in(home)}
    assert runs[slow.info.run_id].info.status == "KILLED" and runs[slow.info.run_id].data.tags["signal"] == "SIGTERM"
    parent, _ = sweep_runs(runs.values(), home / "first")
    assert parent.info.status == "FAILED"                        # not left RUNNING

    resumed = run_cli(*sweep, "resume=true", f"hydra.sweep.dir={home / 'second'}", cwd=home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    new = [r for r in runs_in(home) if r.info.run_id not in runs and r.data.tags.get("stage") == "run"]
    assert [(r.data.params["attack.steps"], r.info.status) for r in new] == [("150", "FINISHED")]


def _the_slow_job_once_the_other_finished(home, process: subprocess.Popen):
    """The RUNNING run of the 150-step job, polled until the 1-step job's run is FINISHED."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(1)
        jobs = [r for r in runs_in(home) if r.data.tags.get("stage") == "run"]
        done = [r for r in jobs if r.data.params.get("attack.steps") == "1" and r.info.status == "FINISHED"]
        slow = [r for r in jobs if r.data.params.get("attack.steps") == "150" and r.info.status == "RUNNING"]
        if done and slow:
            return slow[0]
    raise AssertionError("the 1-step job did not finish while the 150-step job ran")
