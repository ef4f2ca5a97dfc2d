"""The `report` task: FINISHED evaluation runs of an experiment, a sweep or table parent, or a list
of run ids -> pivot (Markdown, CSV), curves and scatter (PNG), RobustBench-layout JSON rows and a
self-contained Markdown and HTML report, all in one folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from defense_cli.errors import ConfigError
from defense_cli.report_plots import curve, scatter
from defense_cli.run_report import (html_document, key_column, markdown_document, metric_column, pivot,
                                    pivot_text, robustbench_rows)
from defense_cli.run_search import linked_runs, runs_frame
from defense_cli.tracking import tracking_uri


@dataclass
class ReportOptions:
    rows: str = "defense"
    cols: str = "attack.eps"
    value: str = "robust_accuracy"
    experiment: str | None = None     # default: mlflow.experiment_name
    parent: str | None = None         # a sweep's or a table's parent run
    run_ids: list[str] = field(default_factory=list)
    out: Path = Path("report")


@dataclass
class ReportResult:
    folder: Path
    n_runs: int
    table: pd.DataFrame
    figures: dict[str, Path]


def select_runs(cfg: DictConfig, options: ReportOptions) -> tuple[pd.DataFrame, str]:
    """The selected runs and a sentence saying what they are; no run is a ConfigError."""
    uri = tracking_uri(cfg)
    experiment = options.experiment or cfg.mlflow.experiment_name
    if options.parent:
        children = runs_frame(uri, [experiment], parent_run_id=options.parent)
        linked = runs_frame(uri, [experiment], run_ids=linked_runs(uri, options.parent))
        frame = pd.concat([children, linked]).drop_duplicates("run_id")
        what = f"the children and linked cells of run {options.parent}"
    elif options.run_ids:
        frame, what = runs_frame(uri, [experiment], run_ids=options.run_ids), f"{len(options.run_ids)} given runs"
    else:
        frame, what = runs_frame(uri, [experiment]), f"every evaluation run of experiment {experiment!r}"
    if frame.empty:
        raise ConfigError(f"no FINISHED evaluation runs among {what} in {uri}; pick them with --experiment, "
                          f"--parent or --run.")
    return frame, f"{len(frame)} FINISHED runs: {what} ({uri})."


def build_report(cfg: DictConfig, options: ReportOptions) -> ReportResult:
    frame, summary = select_runs(cfg, options)
    stats = pivot(frame, options.rows, options.cols, options.value)
    table = pivot_text(stats, options.rows, options.cols, options.value)
    folder = options.out
    folder.mkdir(parents=True, exist_ok=True)
    stats.to_csv(folder / "pivot.csv", index=False)
    (folder / "runs.json").write_text(json.dumps(robustbench_rows(frame), indent=2))
    figures = _figures(frame, options, folder)
    title = f"{options.value} by {options.rows} and {options.cols}"
    summary += f" Cells: mean ± std (n runs) of {options.value}, accuracies in %."
    (folder / "report.md").write_text(markdown_document(title, summary, table, figures))
    (folder / "report.html").write_text(html_document(title, summary, table, figures))
    return ReportResult(folder, len(frame), table, figures)


def _figures(frame: pd.DataFrame, options: ReportOptions, folder: Path) -> dict[str, Path]:
    """Every figure the runs allow: eps and steps curves need two values of the key."""
    value, group, title = metric_column(frame, options.value), key_column(frame, options.rows), context(frame)
    drawn = {
        f"{options.value} against eps": curve(frame, "params.attack.eps", value, group, folder / "eps_curve.png",
                                              "attack eps (pixel scale)", options.value, title),
        f"{options.value} against attack steps": curve(frame, "params.attack.steps", value, group,
                                                       folder / "steps_curve.png", "attack steps", options.value, title),
        "clean vs robust accuracy": scatter(frame, "metrics.defended_clean_accuracy", "metrics.robust_accuracy",
                                            group, folder / "clean_vs_robust.png", "defended clean accuracy",
                                            "robust accuracy", title),
    }
    return {caption: path for caption, path in drawn.items() if path is not None}


def context(frame: pd.DataFrame) -> str:
    """Data, images, model, attack and threat model of the runs, for the figures' titles."""
    def values(column: str) -> str:
        return "/".join(sorted({str(v) for v in frame[column].dropna()})) if column in frame else "?"

    images = "/".join(sorted({str(int(n)) for n in frame["metrics.n_images"]}))
    return (f"{values('tags.dataset')}, {images} test images, {values('tags.model')}, attack "
            f"{values('tags.attack')}, {values('tags.threat_model')}")
