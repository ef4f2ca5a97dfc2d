"""The results table printed at the end of a run."""

from __future__ import annotations

import math
from typing import Mapping

from rich.console import Console
from rich.table import Table

PERCENT = ("accuracy", "rate")


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


#: columns of every table, on a terminal and in a pipe or file (long values wrap inside their cell)
WIDTH = 80


def console() -> Console:
    """A console that prints tables at most WIDTH columns wide."""
    out = Console()
    return Console(width=min(out.width, WIDTH)) if out.is_terminal else Console(width=WIDTH)


def print_table(table: Table) -> None:
    console().print(table)
