"""The table a sweep prints when its jobs are done: one row per job, read back from the store.

The jobs of a sweep may have run in other processes or on other machines (joblib, Ray, SLURM), so
the summary is read from the MLflow store, not from what this process saw: the parent run's
children, and the runs a resumed sweep reused (its tags `reused.<run id>`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from defense_cli.results_table import HEADLINE_METRICS, print_table
from defense_cli.run_search import run_flags, sweep_jobs
from defense_cli.tracking import read_parent_run, tracking_uri

#: (column title, metric) of the summary, in %: the headline is the worst case over the attacks
SUMMARY_METRICS = tuple(zip(("clean", "defended", "robust"), HEADLINE_METRICS))
#: the order of the job counts in the title
STATUS_ORDER = ("finished", "reused", "failed", "killed", "running", "scheduled")


def job_label(run_name: str) -> str:
    """What tells a sweep's job apart: the `key=value` part of its run name (the whole name when
    it has none, e.g. a run named with `mlflow.run_name`)."""
    _, _, swept = str(run_name).partition(" ")
    return swept or str(run_name)


def _percent(value: Any) -> str:
    return "n/a" if pd.isna(value) else f"{100 * float(value):.1f}"


def summary_table(jobs: pd.DataFrame, parent_run_id: str) -> Table:
    """One row per job: what differs, its status (or `reused`), the headline accuracies, flags."""
    counts = jobs["status"].where(~jobs["reused"], "reused").str.lower().value_counts()
    order = sorted(counts.index, key=lambda status: (STATUS_ORDER.index(status) if status in STATUS_ORDER
                                                     else len(STATUS_ORDER), status))
    table = Table(title=f"sweep {parent_run_id}: {len(jobs)} jobs ("
                        + ", ".join(f"{counts[status]} {status}" for status in order) + ")",
                  caption="accuracies in % of each job's test images; robust = the worst case over the "
                          "attack suite (robust_accuracy)", show_header=True, header_style="bold")
    table.add_column("job")
    table.add_column("status")
    for title, _ in SUMMARY_METRICS:
        table.add_column(title, justify="right")
    table.add_column("images", justify="right")
    table.add_column("flags", justify="right")
    for _, run in jobs.iterrows():
        values = [_percent(run.get(f"metrics.{metric}")) for _, metric in SUMMARY_METRICS]
        images = run.get("metrics.n_images")
        table.add_row(job_label(run.get("tags.mlflow.runName", run["run_id"])),
                      "reused" if run["reused"] else str(run["status"]), *values,
                      "" if pd.isna(images) else f"{int(images):,}", str(len(run_flags(run))))
    return table


class SweepSummaryCallback(Callback):
    """Prints the summary table at the end of a multirun (after every job, on any launcher)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = read_parent_run(Path(config.hydra.sweep.dir))
        if parent is None:
            return
        jobs = sweep_jobs(tracking_uri(config), config.mlflow.experiment_name, parent)
        if not jobs.empty:
            print_table(summary_table(jobs, parent))
