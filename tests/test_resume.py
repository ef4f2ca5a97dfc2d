"""`resume=true`: a sweep job whose config hash already has a FINISHED run reuses it (the way a
preempted or killed sweep continues), and a sweep that ends with an error leaves no parent RUNNING."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, runs_in, sweep_runs
from defense_cli.config import compose, config_hash

SWEEP = ["run", "-m", "attack.eps=0.02,0.05", "dataset.limit=16", "train.epochs=1", "eval_batch_size=16",
         "attack.steps=1", "num_samples_grid=0"]


def test_resume_does_not_change_the_config_hash():
    assert config_hash(compose(["resume=true"])) == config_hash(compose([]))
    assert config_hash(compose(["attack.eps=0.2"])) != config_hash(compose([]))


def test_resume_must_be_a_boolean():
    from defense_cli.config import validate
    from defense_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="resume='maybe' is not allowed: resume must be true or false"):
        validate(compose(["resume=maybe"]))


def _evaluation_runs(home):
    return [r for r in runs_in(home) if r.data.tags.get("stage") == "run"]


@pytest.mark.slow
def test_a_resumed_sweep_runs_only_the_jobs_without_a_finished_run(home, shared_cache):
    where = [f"paths.home={home}", f"paths.cache_dir={shared_cache}"]
    first = run_cli(*SWEEP, *where, f"hydra.sweep.dir={home / 'first'}", cwd=home)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {r.info.run_id: r for r in _evaluation_runs(home)}
    assert len(before) == 2

    second = run_cli(*SWEEP[:2], "attack.eps=0.02,0.05,0.08", *SWEEP[3:], *where, "resume=true",
                     f"hydra.sweep.dir={home / 'second'}", cwd=home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reused, not run again") == 2
    assert "3 jobs (1 finished, 2 reused)" in second.stdout          # the sweep's summary table
    new = [r for r in _evaluation_runs(home) if r.info.run_id not in before]
    assert [(r.data.params["attack.eps"], r.info.status) for r in new] == [("0.08", "FINISHED")]
    parent, children = sweep_runs(runs_in(home), home / "second")
    assert parent.info.status == "FINISHED" and [c.info.run_id for c in children] == [new[0].info.run_id]
    reused = {key.removeprefix("reused."): value for key, value in parent.data.tags.items()
              if key.startswith("reused.")}
    assert set(reused) == set(before)                      # the earlier runs, linked from the new parent
    for job in ("0", "1"):                                 # each reused job kept the stored numbers
        kept = json.loads((home / "second" / job / "results.json").read_text())
        assert kept["reused"] and kept["metrics"]["robust_accuracy"] == pytest.approx(
            before[kept["run_id"]].data.metrics["robust_accuracy"])


@pytest.mark.slow
def test_a_sweep_whose_job_fails_marks_its_parent_failed(home, shared_cache):
    result = run_cli(*SWEEP[:2], "attack.eps=0.02", *SWEEP[3:], "model.checkpoint=missing.pt",
                     f"paths.home={home}", f"paths.cache_dir={shared_cache}",
                     f"hydra.sweep.dir={home / 'sweep'}", cwd=home)
    assert result.returncode != 0
    parent, _ = sweep_runs(runs_in(home), home / "sweep")
    assert parent.info.status == "FAILED"
