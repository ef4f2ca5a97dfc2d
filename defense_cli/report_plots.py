"""The figures of a report, drawn from a frame of runs (one row per run, `run_search` columns):
robust accuracy against eps (the security-evaluation curve) and against attack steps, one line per
defense (mean over the runs at each point, std as error bars), and clean vs robust accuracy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def numeric_values(frame: pd.DataFrame, column: str) -> pd.Series | None:
    """The column as numbers, or None when it is absent or not all numeric."""
    if column not in frame:
        return None
    values = pd.to_numeric(frame[column], errors="coerce")
    return None if values.isna().any() else values


def curve(frame: pd.DataFrame, x: str, y: str, group: str, path: Path, x_label: str, y_label: str,
          title: str) -> Path | None:
    """One line per `group` value of mean `y` against numeric `x`; None when `x` has < 2 values."""
    xs = numeric_values(frame, x)
    if xs is None or xs.nunique() < 2:
        return None
    data = frame.assign(_x=xs, _y=frame[y].astype(float))
    stats = data.groupby([group, "_x"])["_y"].agg(["mean", "std"]).reset_index()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, line in stats.groupby(group):
        ax.errorbar(line["_x"], line["mean"], yerr=line["std"].fillna(0), marker="o", capsize=3, label=str(name))
    return _save(plt, fig, ax, path, (x_label, y_label, title), group)


def scatter(frame: pd.DataFrame, x: str, y: str, group: str, path: Path, x_label: str, y_label: str,
            title: str) -> Path | None:
    """One point per run, coloured by `group`; None when the runs lack either metric."""
    if x not in frame or y not in frame:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, points in frame.groupby(group):
        ax.scatter(points[x].astype(float), points[y].astype(float), label=str(name))
    return _save(plt, fig, ax, path, (x_label, y_label, title), group)


def _save(plt, fig, ax, path: Path, labels: tuple[str, str, str], group: str) -> Path:
    """Axis labels and title, grid and legend (titled by the group key), then the PNG."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(title=group.split(".")[-1], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
