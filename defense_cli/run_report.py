"""A report over evaluation runs (a frame with one row per run, `run_search` columns): a pivot of
any metric by any two config keys (mean +- std when several runs share a cell), JSON rows in
RobustBench's field layout, and a self-contained Markdown or HTML document with its PNGs inlined.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import pandas as pd

from defense_cli.errors import ConfigError
from defense_cli.run_search import run_flags

#: The fields of a JSON row (documented in docs/tables-and-reports.md): name -> JSON type.
#: RobustBench's layout (name, dataset, architecture, threat_model, eps, clean_acc, and the
#: robust accuracy where RobustBench has autoattack_acc), plus the attack and evaluation facts.
ROW_FIELDS = {
    "name": "string", "run_id": "string", "dataset": "string", "architecture": "string",
    "threat_model": "string", "eps": "number", "clean_acc": "string", "robust_acc": "string",
    "attack": "string", "attack_strength": "string", "evaluation": "string", "n_images": "integer",
    "flags": "array",
}
ROW_SCHEMA = {"type": "object", "required": sorted(ROW_FIELDS), "additionalProperties": False,
              "properties": {name: {"type": kind} for name, kind in ROW_FIELDS.items()}}
NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def key_column(frame: pd.DataFrame, key: str) -> str:
    """The column of a config key (`attack.eps`), a group (`defense`: its tag) or a metric."""
    for column in (f"params.{key}", f"tags.{key}", f"params.{key}.name", f"metrics.{key}"):
        if column in frame:
            return column
    keys = sorted(c.removeprefix("params.") for c in frame.columns if c.startswith("params."))
    raise ConfigError(f"{key!r} is not a config key, group or metric of the selected runs; config keys include: "
                      f"{', '.join(keys[:40])}{' ...' if len(keys) > 40 else ''}.")


def metric_column(frame: pd.DataFrame, metric: str) -> str:
    if f"metrics.{metric}" not in frame:
        names = sorted(c.removeprefix("metrics.") for c in frame.columns if c.startswith("metrics."))
        raise ConfigError(f"--value {metric!r} is not a metric of the selected runs; allowed: {', '.join(names)}.")
    return f"metrics.{metric}"


def _ordered(values: pd.Series) -> pd.Series:
    """Numbers when every value is one (so eps sorts 0.01 < 0.1), else the strings."""
    numbers = pd.to_numeric(values, errors="coerce")
    return values if numbers.isna().any() else numbers


def pivot(frame: pd.DataFrame, rows: str, cols: str, value: str) -> pd.DataFrame:
    """Long format, one line per (row, col): mean, std (NaN for one run) and count of `value`."""
    r, c, v = key_column(frame, rows), key_column(frame, cols), metric_column(frame, value)
    data = pd.DataFrame({rows: _ordered(frame[r]), cols: _ordered(frame[c]), value: frame[v].astype(float)})
    return data.groupby([rows, cols])[value].agg(["mean", "std", "count"]).reset_index()


def _number(metric: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:.1f}" if "accuracy" in metric or "rate" in metric else f"{value:.4g}"


def pivot_text(stats: pd.DataFrame, rows: str, cols: str, value: str) -> pd.DataFrame:
    """Rows x cols of "mean +- std (n)" ("mean" alone for a single run); accuracies in %."""
    def text(line: pd.Series) -> str:
        if line["count"] == 1:
            return _number(value, line["mean"])
        return f"{_number(value, line['mean'])} ± {_number(value, line['std'])} (n={int(line['count'])})"

    table = stats.assign(text=stats.apply(text, axis=1)).pivot(index=rows, columns=cols, values="text")
    return table.fillna("")


def robustbench_rows(frame: pd.DataFrame) -> list[dict]:
    """One JSON row per run in RobustBench's field layout (accuracies as "87.20" strings in %)."""
    def field(run: pd.Series, column: str, default: str = "") -> str:
        value = run.get(column, default)
        return default if not isinstance(value, str) else value

    rows = []
    for _, run in frame.iterrows():
        eps = pd.to_numeric(run.get("params.attack.eps"), errors="coerce")
        rows.append({
            "name": field(run, "tags.defense"), "run_id": run["run_id"], "dataset": field(run, "tags.dataset"),
            "architecture": field(run, "tags.model"),
            "threat_model": NORMS.get(field(run, "params.attack.norm"), field(run, "params.attack.norm", "none")),
            "eps": 0.0 if pd.isna(eps) else float(eps),
            "clean_acc": f"{100 * run['metrics.defended_clean_accuracy']:.2f}",
            "robust_acc": f"{100 * run['metrics.robust_accuracy']:.2f}",
            "attack": field(run, "tags.attack"), "attack_strength": field(run, "tags.attack_strength"),
            "evaluation": field(run, "tags.threat_model"), "n_images": int(run["metrics.n_images"]), "flags": run_flags(run),
        })
    return rows


def _inline(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def markdown_document(title: str, summary: str, table: pd.DataFrame, figures: dict[str, Path]) -> str:
    """Title, what was selected, the pivot and every figure as an inline PNG."""
    images = "\n\n".join(f"![{caption}]({_inline(path)})" for caption, path in figures.items())
    return f"# {title}\n\n{summary}\n\n{table.to_markdown(stralign='right', disable_numparse=True)}\n\n{images}\n"


def html_document(title: str, summary: str, table: pd.DataFrame, figures: dict[str, Path]) -> str:
    """The same as `markdown_document`, as one HTML file."""
    images = "\n".join(f'<figure><img src="{_inline(path)}" alt="{caption}"><figcaption>{caption}</figcaption>'
                       f"</figure>" for caption, path in figures.items())
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head><body>\n"
            f"<h1>{title}</h1>\n<p>{summary}</p>\n{table.to_html()}\n{images}\n</body></html>\n")
