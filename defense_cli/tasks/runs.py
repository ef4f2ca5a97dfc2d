"""The `runs` task: list the experiment's runs, and close the stale ones (dead process, old heartbeat)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from omegaconf import DictConfig
from rich.table import Table

from defense_cli.results_table import console
from defense_cli.tracking import HEARTBEAT_TAG, Tracker


def list_runs(cfg: DictConfig, stale: bool, max_age_seconds: float, status: str | None, limit: int) -> None:
    """Print the newest `limit` runs (in `status`); with `stale`, first mark the stale ones FAILED."""
    tracker = Tracker.from_config(cfg)
    out = console()
    if stale:
        found = tracker.stale_runs(max_age_seconds)
        tracker.mark_stale(found)
        out.print(f"marked {len(found)} stale run(s) FAILED (heartbeat limit {max_age_seconds:g} s)")
        for run, reason in found:
            out.print(f"  {run.info.run_id}  {reason}", soft_wrap=True)
    out.print(runs_table(tracker.runs(status, limit), f"runs of {cfg.mlflow.experiment_name} at {tracker.uri}"))


def runs_table(runs: list, title: str) -> Table:
    """One row a run: id, name, status, start time, host:pid and the age of its heartbeat."""
    table = Table(title=title)
    for column in ("run id", "name", "status", "started (UTC)", "host:pid", "heartbeat"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for run in runs:
        tags = run.data.tags
        started = datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        beat = tags.get(HEARTBEAT_TAG)
        table.add_row(run.info.run_id, tags.get("mlflow.runName", ""), run.info.status, started,
                      f"{tags.get('host', '?')}:{tags.get('pid', '?')}",
                      f"{now - float(beat):.0f} s ago" if beat else "-")
    return table
