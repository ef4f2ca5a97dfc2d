"""The `table` task: a paper-table spec run as one Hydra multirun under one MLflow parent run.

Every cell is composed and checked first (a bad spec writes nothing). A cell whose config hash
(`config.config_hash`, the run tag `config_hash`) already has a FINISHED run is not run again
unless `rerun`: its run is reused and linked from the parent (tag `cell.<cell>`). The remaining
cells run as `+table_cell=<cell>,...` with `mlflow.parent_run_id` set, so every Hydra launcher
runs them and each becomes a child of the table's parent. `--defenses`/`--attacks` choose the
cells to run, not the table: the table holds every cell of the spec (under `--adaptive`, every
defense) that has a FINISHED run, and says "not run" in the others, so columns run at different
times fill one table. The filled table (Markdown, CSV, heat map) is written to
`experiments/results/<spec name>/[<setup>/]` beside the spec (the setup: the experiment preset,
`reduced`, `adaptive`) and logged on the parent.
"""

from __future__ import annotations

import datetime
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from omegaconf import DictConfig

from defense_cli.config import VOLATILE_KEYS, compose, config_hash
from defense_cli.errors import ConfigError
from defense_cli.paper_table import cell_frame, heat_map, layout, markdown
from defense_cli.run_search import runs_by_hash, runs_frame
from defense_cli.table_spec import Cell, TableSpec, cell_overrides, experiment_presets, write_cell_group
from defense_cli.tasks.prepare import check_config
from defense_cli.tracking import RunLog, Tracker, git_commit, home_dir, tracking_uri


@dataclass
class TableOptions:
    limit: int | None = None
    reduced: bool = False
    rerun: bool = False
    metric: str = "robust_accuracy"
    overrides: list[str] = field(default_factory=list)   # e.g. hydra/launcher=joblib, paths.home=...
    defenses: list[str] = field(default_factory=list)    # defense columns to run (empty: all); the table shows all
    attacks: list[str] = field(default_factory=list)     # attack rows to run (empty: all); the table shows all
    adaptive: bool = False                                # the defenses under the adaptive suite instead

    def setup_name(self) -> str:
        """The folder under `experiments/results/<spec>/` for this setup ('' for the spec as written):
        the experiment preset, every other override that changes the computation (`/` written `_`),
        then `reduced`, then `adaptive`, joined by '-'."""
        others = [o.replace("/", "_") for o in computing_overrides(self.overrides) if not experiment_presets([o])]
        return "-".join([*experiment_presets(self.overrides), *others, *(["reduced"] if self.reduced else []),
                         *(["adaptive"] if self.adaptive else [])])


def _volatile(override: str) -> bool:
    return re.split(r"[./=]", override.lstrip("+~"))[0] in VOLATILE_KEYS


def computing_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change what a run computes: all but those of VOLATILE_KEYS."""
    return [o for o in overrides if not _volatile(o)]


def storage_overrides(overrides: list[str]) -> list[str]:
    """The overrides of VOLATILE_KEYS (where runs are stored, what is printed): all that the table's
    store needs. The others may name keys that only a cell's options have (`attack.attacks.apgd_t.steps`
    under `--adaptive`), so they are checked on each cell's config instead."""
    return [o for o in overrides if _volatile(o)]


@dataclass
class TableResult:
    parent_run_id: str
    ran: int
    reused: int
    folder: Path
    markdown: str


def run_table(path: Path, options: TableOptions, run_cells: Callable[[list[str]], None]) -> TableResult:
    """Run (or reuse) the chosen cells of the spec at `path`; `run_cells(args)` runs a Hydra multirun."""
    spec = TableSpec.load(path)
    if options.attacks and options.adaptive:
        raise ConfigError(f"--attacks {','.join(options.attacks)} and --adaptive exclude each other: "
                          "--adaptive replaces the spec's attack rows by the adaptive suite.")
    if options.adaptive:
        spec = spec.under_adaptive_suite()
    chosen = _chosen_cells(spec, options)
    common = spec.common_overrides(options.reduced, options.limit, options.overrides)
    first = compose(storage_overrides(common))
    work = home_dir(first) / "outputs" / "tables" / spec.name / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    hashes = _cell_hashes(spec, common, work)
    uri, experiment = tracking_uri(first), first.mlflow.experiment_name
    reused = {} if options.rerun else runs_by_hash(uri, experiment, (hashes[cell] for cell in chosen))
    todo = [cell.choice for cell in chosen if hashes[cell] not in reused]
    tags = {"table": spec.name, "git_commit": git_commit(), "cells_run": str(len(todo)),
            "cells_reused": str(len(chosen) - len(todo))}
    with Tracker(uri, experiment).run(f"table {spec.name}", tags) as parent:
        if todo:
            run_cells(["-m", *common, *cell_overrides(work, todo), f"mlflow.parent_run_id={parent.run_id}",
                       f"hydra.sweep.dir={work / 'multirun'}"])
        folder, text = _finish(spec, chosen, options, hashes, uri, experiment, parent)
    return TableResult(parent.run_id, len(todo), len(chosen) - len(todo), folder, text)


def _chosen_cells(spec: TableSpec, options: TableOptions) -> list[Cell]:
    """The cells to run: those of `--defenses` and `--attacks` (every cell when neither is given)."""
    chosen = spec.with_defenses(options.defenses) if options.defenses else spec
    return (chosen.with_attacks(options.attacks) if options.attacks else chosen).cells


def _cell_hashes(spec: TableSpec, common: list[str], work: Path) -> dict[Cell, str]:
    """Each cell's config hash, its config checked; a bad override leaves no work folder behind."""
    write_cell_group(spec.cells, work)
    try:
        return {cell: config_hash(_checked(compose([*common, *cell_overrides(work, [cell.choice])])))
                for cell in spec.cells}
    except Exception:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _checked(cfg: DictConfig) -> DictConfig:
    check_config(cfg)
    return cfg


def _finish(spec: TableSpec, chosen: list[Cell], options: TableOptions, hashes: dict[Cell, str], uri: str,
            experiment: str, parent: RunLog) -> tuple[Path, str]:
    """Read every cell's run, write and log the table; the cells' run ids become parent tags. A
    chosen cell without a FINISHED run is an error; another is shown "not run"."""
    found = runs_by_hash(uri, experiment, hashes.values())
    missing = [cell.choice for cell in chosen if hashes[cell] not in found]
    if missing:
        raise RuntimeError(f"cells without a FINISHED run after the multirun: {', '.join(missing)}")
    cells = [(cell, found.get(value)) for cell, value in hashes.items()]
    run_ids = [run_id for _, run_id in cells if run_id is not None]
    runs = runs_frame(uri, [experiment], run_ids=run_ids).set_index("run_id")
    frame = cell_frame(cells, runs, options.metric)
    text = markdown(layout(frame, spec.clean_attacks), caption(spec, options, frame, runs), frame)
    folder = spec.path.parent / "results" / spec.name / options.setup_name()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(text)
    frame.to_csv(folder / "table.csv", index=False)
    heat_map(frame, folder / "heatmap.png", f"{spec.name}: measured - published ({options.metric}, points)")
    for name in ("table.md", "table.csv", "heatmap.png"):
        parent.artifact(folder / name)
    parent.tags({**{f"cell.{cell.choice}": run_id for cell, run_id in cells if run_id is not None},
                 "table_metric": options.metric})
    return folder, text


def caption(spec: TableSpec, options: TableOptions, frame: pd.DataFrame, runs: pd.DataFrame) -> str:
    """What was measured, on what, with which attack strength and which scaling (--limit, the
    reduced setup, and every extra override but those of VOLATILE_KEYS), and how many cells are not
    run yet."""
    d = spec.data
    measured = frame[frame["run_id"] != ""]
    images = ", ".join(str(n) for n in sorted(measured["n_images"].unique()))
    data = ", ".join(sorted(runs["params.dataset.name"].unique()))
    models = ", ".join(sorted(runs["params.model.name"].unique()))
    strengths = "; ".join(f"{attack}: {' / '.join(dict.fromkeys(group['attack_strength']))}"
                          for attack, group in measured.groupby("attack", sort=False))
    scaling = [f"--limit {options.limit}"] if options.limit else []
    scaling += computing_overrides(options.overrides)
    if options.reduced:
        scaling.append(f"reduced setup ({' '.join(spec.reduced['overrides'])}): {spec.reduced['note']}")
    not_run = len(frame) - len(measured)
    pending = f" {not_run} of {len(frame)} cells not run yet." if not_run else ""
    source = f"{d['paper'][:3]} Table {d['table']}, " if "paper" in d else ""
    return (f"**{d['caption']}** ({source}{d['threat_model']}). "
            f"{options.metric} in %, measured (published); {images} test images of {data}, model {models}. "
            f"Attacks: {strengths}. Scaling: {'; '.join(scaling) or 'none (the spec as written)'}.{pending}")
