"""The `adaptive` suite against every defense on mnist5k: runs one `defense-cli run` per row, then
writes the defense x attack table (strength, draws, flags) from the MLflow store into
experiments/results/adaptive_mnist5k.md.

    python experiments/adaptive_mnist5k.py                 # run every row, then write the table
    python experiments/adaptive_mnist5k.py --rows jpeg tvm  # only these rows
    python experiments/adaptive_mnist5k.py --table-only    # rewrite the table from the store

The deterministic defenses run the suite at its full default strength (PGD-7, then APGD-CE 100
steps x 2 restarts and APGD-T 100 steps x 9 target classes, as a cascade) on 500 test images
(LRC-HSP, slow, on 50); the random defenses on 50 images with EOT 5 and 5 draws, one APGD-CE restart
and 3 APGD-T target classes (the default EOT 20 would cost about 4 x more). Every override is in
ROWS and printed under the table. The classifier of
`splic` and `menet` is trained on defended images (`defense@train.preprocess=...`, the papers'
SPLIC-Net / ME-Net), shared through the cache with the paper tables' reduced cells.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from defense_cli.run_search import search_frame

EXPERIMENT = "adaptive_mnist5k"
COMMON = ["attack=adaptive", f"mlflow.experiment_name={EXPERIMENT}"]
RANDOM = ["dataset.limit=50", "attack.eot_samples=5", "threat_model.n_draws=5", "attack.attacks.apgd_ce.restarts=1",
          "attack.attacks.apgd_t.target_classes=3"]
ROWS: dict[str, list[str]] = {
    "none": ["dataset.limit=500"],
    "jpeg": ["dataset.limit=500"],
    "median": ["dataset.limit=500"],
    "bit_depth": ["dataset.limit=500"],
    "lrc_hsp": ["dataset.limit=50"],
    "pd_wavelet": RANDOM,
    "tvm": RANDOM,
    "menet": ["defense@train.preprocess=menet", *RANDOM],
    "splic": ["defense@train.preprocess=splic", *RANDOM],
}
ATTACKS = ["pgd7", "apgd_ce", "apgd_t", "apgd_ce_surrogate"]
RESULT = Path(__file__).parent / "results" / f"{EXPERIMENT}.md"
START, END = "<!-- table: written by experiments/adaptive_mnist5k.py -->\n", "<!-- end of table -->"


def run_row(defense: str, uri: str | None) -> float:
    """One `defense-cli run` of the row; returns its wall time in seconds."""
    command = [str(Path(sys.executable).with_name("defense-cli")), "run", f"defense={defense}", *COMMON,
               *ROWS[defense], *([f"mlflow.tracking_uri={uri}"] if uri else [])]
    print("+", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def _percent(value: float) -> str:
    return "-" if pd.isna(value) else f"{100 * value:.1f}"


def _attack_cell(run: pd.Series, name: str) -> str:
    for key in (f"metrics.robust_accuracy_{name}", f"metrics.robust_accuracy_after_{name}"):
        if key in run and not pd.isna(run[key]):
            broken = run.get(f"metrics.broken_by_{name}")
            return f"{_percent(run[key])} ({int(broken)})" if broken is not None and not pd.isna(broken) else _percent(run[key])
    return "-"


def _flags(run: pd.Series) -> str:
    fired = [key.removeprefix("tags.check.") for key, value in run.items()
             if key.startswith("tags.check.") and isinstance(value, str) and value.startswith("FLAG")]
    return ", ".join(sorted(fired)) or "none"


def _indicators(run: pd.Series) -> str:
    values = {key.removeprefix("metrics.indicator_"): value for key, value in run.items()
              if key.startswith("metrics.indicator_") and not pd.isna(value)}
    return ", ".join(f"{name}={100 * value:.0f}%" for name, value in sorted(values.items()))


def table(uri: str) -> str:
    """The Markdown table of the newest FINISHED run of every row."""
    frame = search_frame(uri, [EXPERIMENT], "attributes.status = 'FINISHED' and tags.stage = 'run'")
    lines = ["| defense | images | suite | EOT | draws | defended clean % | worst case % | "
             + " | ".join(f"{name} %" for name in ATTACKS) + " | first draw % | gradients | attack s | flags | indicators |",
             "|" + "---|" * (12 + len(ATTACKS) - 1)]
    for defense in ROWS:
        rows = frame[frame["params.defense.name"] == defense] if "params.defense.name" in frame else frame.iloc[:0]
        if rows.empty:
            continue
        run = rows.iloc[0]
        random = not pd.isna(run.get("metrics.n_draws", float("nan")))
        cells = [defense, f"{int(run['metrics.n_images'])}", "cascade" if run.get("params.attack.cascade") == "True"
                 else "independent", run["params.attack.eot_samples"] if random else 1,
                 int(run["metrics.n_draws"]) if random else 1,
                 _percent(run["metrics.defended_clean_accuracy"]), f"**{_percent(run['metrics.robust_accuracy'])}**",
                 *[_attack_cell(run, name) for name in ATTACKS],
                 _percent(run.get("metrics.robust_accuracy_first_draw", float("nan"))),
                 f"{int(run['metrics.gradient_evaluations']):,}", f"{run['metrics.attack_seconds']:.0f}",
                 _flags(run), _indicators(run)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    overrides = [f"- {defense}: `{' '.join(extra)}`" for defense, extra in ROWS.items()]
    return "\n".join([*lines, "", f"Common overrides: `{' '.join(COMMON)}`; per row:", "", *overrides, ""])


def write_table(markdown: str) -> None:
    """Replace the table between the START and END markers of RESULT, keeping the text around it."""
    text = RESULT.read_text()
    before, rest = text.split(START, 1)
    RESULT.write_text(before + START + markdown + rest[rest.index(END):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    args = parser.parse_args()
    if not args.table_only:
        for defense in args.rows:
            print(f"{defense}: {run_row(defense, args.tracking_uri):.0f} s wall", flush=True)
    write_table(table(args.tracking_uri))
    print(f"wrote the table into {RESULT}")


if __name__ == "__main__":
    main()
