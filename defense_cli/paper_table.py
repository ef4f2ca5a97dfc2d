"""A paper table filled with measured values: one row per attack, one column per defense, as the
spec's `paper_results` (and the paper) print it; each cell "measured (published)" in %.

Input: the spec's cells, each with its run id (None for a cell not run yet), and one row per run
of MLflow run data (`run_search` columns). Output: Markdown (caption, table, flag notes), CSV (one
row per cell, numbers unformatted, empty where not run) and a heat map of measured minus published.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from defense_cli.run_search import run_flags
from defense_cli.table_spec import Cell

WORST_CASE = "worst case over attacks"
FLAG_MARK = "!"
NOT_RUN = "not run"


def cell_frame(cells: list[tuple[Cell, str | None]], runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (cell, its run id or None): labels, measured and published %, their difference,
    run id, images, attack strength and the validity flags the run raised; a cell without a run has
    its published % only. `runs` is indexed by run id."""
    rows = []
    for cell, run_id in cells:
        published = math.nan if cell.published is None else float(cell.published)
        row = {"attack": cell.attack, "defense": cell.defense, "measured": math.nan, "published": published,
               "difference": math.nan, "n_images": None, "attack_strength": "", "flags": "", "run_id": ""}
        if run_id is not None:
            run = runs.loc[run_id]
            measured = 100 * float(run[f"metrics.{metric}"])
            row.update(measured=measured, difference=measured - published, n_images=int(run["metrics.n_images"]),
                       attack_strength=run.get("tags.attack_strength", ""), flags="; ".join(run_flags(run)),
                       run_id=run_id)
        rows.append(row)
    return pd.DataFrame(rows).astype({"n_images": "Int64"})


def worst_case(frame: pd.DataFrame, clean_attacks: set[str]) -> pd.Series:
    """Per defense, the lowest measured accuracy over the real attacks (clean rows and cells not run
    left out)."""
    attacked = frame[~frame["attack"].isin(clean_attacks)]
    return attacked.groupby("defense", sort=False)["measured"].min()


def _text(row: pd.Series) -> str:
    if math.isnan(row["measured"]):
        return NOT_RUN
    published = "" if math.isnan(row["published"]) else f" ({row['published']:.1f})"
    return f"{row['measured']:.1f}{published}{' ' + FLAG_MARK if row['flags'] else ''}"


def _worst_text(lowest: float, complete: bool) -> str:
    """The worst case as printed: "≤ x" while some attack of the column is not run (it can only fall)."""
    if math.isnan(lowest):
        return NOT_RUN
    return f"{lowest:.1f}" if complete else f"≤ {lowest:.1f}"


def layout(frame: pd.DataFrame, clean_attacks: set[str]) -> pd.DataFrame:
    """Attacks x defenses of "measured (published)" strings ("not run" for a cell without a run), in
    the spec's order, plus the worst case over attacks when there are at least two real attacks."""
    texts = frame.assign(text=frame.apply(_text, axis=1))
    table = texts.pivot(index="attack", columns="defense", values="text")
    table = table.loc[list(dict.fromkeys(frame["attack"])), list(dict.fromkeys(frame["defense"]))]
    attacked = frame[~frame["attack"].isin(clean_attacks)]
    if attacked["attack"].nunique() >= 2:
        complete = attacked.groupby("defense", sort=False)["measured"].apply(lambda values: values.notna().all())
        lowest = worst_case(frame, clean_attacks)
        table.loc[WORST_CASE] = [_worst_text(lowest[defense], complete[defense]) for defense in table.columns]
    table.index.name = table.columns.name = None
    return table


def markdown(table: pd.DataFrame, caption: str, frame: pd.DataFrame) -> str:
    """Caption, the table, and one note per flagged cell."""
    notes = [f"- {FLAG_MARK} {row.attack} / {row.defense}: {row.flags}" for row in frame.itertuples() if row.flags]
    body = table.to_markdown(stralign="right", disable_numparse=True)
    return "\n\n".join(part for part in (caption, body, "\n".join(notes)) if part) + "\n"


def heat_map(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """PNG of measured minus published (percentage points) per cell; blank where none was published."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = frame.pivot(index="attack", columns="defense", values="difference")
    grid = grid.loc[list(dict.fromkeys(frame["attack"])), list(dict.fromkeys(frame["defense"]))]
    limit = max(float(grid.abs().max().max()) if grid.notna().any().any() else 1.0, 1.0)
    fig, ax = plt.subplots(figsize=(1.6 * len(grid.columns) + 2, 0.7 * len(grid.index) + 1.8))
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(grid.index)), grid.index)
    for (i, j), value in pd.DataFrame(grid.to_numpy()).stack().dropna().items():
        ax.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=9)
    fig.colorbar(image, ax=ax, label="measured - published (points)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
