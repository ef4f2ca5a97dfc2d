"""The table a sweep prints at its end (read from the store) and `run --quiet`."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import run_cli, runs_in, sweep_runs
from defense_cli.sweep_summary import job_label, summary_table


def test_a_job_is_labelled_by_what_its_sweep_varies():
    assert job_label("mnist5k-small_cnn-jpeg-pgd-white_box defense=jpeg attack.eps=0.05") == \
        "defense=jpeg attack.eps=0.05"
    assert job_label("my-run") == "my-run"


def test_the_title_counts_jobs_by_status_and_reused_runs_apart():
    jobs = pd.DataFrame({"run_id": ["a", "b", "c"], "status": ["FINISHED", "FAILED", "FINISHED"],
                         "reused": [False, False, True], "tags.mlflow.runName": ["x eps=1", "x eps=2", "x eps=3"],
                         "metrics.robust_accuracy": [0.25, float("nan"), 0.5]})
    table = summary_table(jobs, "parent")
    assert table.title == "sweep parent: 3 jobs (1 finished, 1 reused, 1 failed)"
    robust = [column for column in table.columns if column.header == "robust"][0]
    assert list(robust._cells) == ["25.0", "n/a", "50.0"]


@pytest.mark.slow
def test_a_quiet_sweep_prints_a_line_per_job_and_one_summary_of_the_stored_metrics(home, shared_cache):
    result = run_cli("run", "-m", "--quiet", "defense=none,jpeg", "dataset.limit=16", "train.epochs=1",
                     "eval_batch_size=16", "attack.steps=1", "num_samples_grid=0", f"paths.home={home}",
                     f"paths.cache_dir={shared_cache}", f"hydra.sweep.dir={home / 'sweep'}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "defense-cli run" not in result.stdout                  # no per-job results table
    parent, children = sweep_runs(runs_in(home), home / "sweep")
    for child in children:
        line = re.search(rf"mlflow run {child.info.run_id}: .*robust_accuracy=([\d.]+)%", result.stdout)
        assert line and float(line.group(1)) == pytest.approx(100 * child.data.metrics["robust_accuracy"], abs=0.01)
    assert f"sweep {parent.info.run_id}: 2 jobs (2 finished)" in result.stdout
    rows = {match.group(1): float(match.group(2)) for match in
            re.finditer(r"│ (defense=\w+)\s+│ FINISHED │\s+[\d.]+ │\s+[\d.]+ │\s+([\d.]+) │", result.stdout)}
    stored = {child.data.params["defense.name"]: child.data.metrics["robust_accuracy"] for child in children}
    assert rows == {f"defense={name}": pytest.approx(100 * value, abs=0.05) for name, value in stored.items()}
