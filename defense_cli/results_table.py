"""The results table printed at the end of a run."""

from __future__ import annotations

import math
from typing import Mapping

from rich.console import Console
from rich.table import Table

PERCENT = ("accuracy", "rate")
#: the accuracies a one-line result and a sweep's summary show; robust_accuracy is the worst case
HEADLINE_METRICS = ("clean_accuracy", "defended_clean_accuracy", "robust_accuracy")


def _format(name: str, value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if any(word in name for word in PERCENT) or name.startswith("indicator_"):
        return f"{100 * value:.2f} %"
    if name.startswith("n_") or name in ("gradient_evaluations", "queries"):
        return f"{int(value):,}"
    return f"{value:.4g}"


def results_table(title: str, metrics: Mapping[str, float], context: Mapping[str, str],
                  flags: Mapping[str, str] | None = None) -> Table:
    """A two-column table: the run's context (data, attack strength...) then every metric."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in context.items():
        table.add_row(key, str(value))
    table.add_section()
    for key, value in metrics.items():
        table.add_row(key, _format(key, value))
    for key, value in (flags or {}).items():
        table.add_row(f"[bold red]FLAG {key}[/]", value)
    return table


def results_line(run_id: str, metrics: Mapping[str, float], n_flags: int, note: str = "") -> str:
    """A run's result on one line (what `quiet=true` prints): its id, the headline accuracies in %,
    the number of flags and of test images."""
    shown = " ".join(f"{name}={100 * metrics[name]:.2f}%" for name in HEADLINE_METRICS if name in metrics)
    return (f"mlflow run {run_id}{f' ({note})' if note else ''}: {shown} flags={n_flags} "
            f"n_images={int(metrics.get('n_images', 0))}")


#: columns of every table, on a terminal and in a pipe or file (long values wrap inside their cell)
WIDTH = 80


def console() -> Console:
    """A console that prints tables at most WIDTH columns wide."""
    out = Console()
    return Console(width=min(out.width, WIDTH)) if out.is_terminal else Console(width=WIDTH)


def print_table(table: Table) -> None:
    console().print(table)
