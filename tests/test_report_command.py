"""`defense-cli report`: the pivot equals the stored metrics (mean and std over runs sharing a
cell), the curves are real PNGs, the JSON rows validate against the documented field list, and the
Markdown/HTML reports carry their figures inline. One end-to-end test on a real 2 x 2 sweep."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import invoke_cli, run_cli
from defense_cli.run_report import ROW_FIELDS, ROW_SCHEMA
from defense_cli.tracking import Tracker

DOCS = Path(__file__).resolve().parent.parent / "docs" / "tables-and-reports.md"


def log_grid(home: Path) -> Tracker:
    """2 defenses x 2 eps x 2 seeds of evaluation runs written by the project's tracker."""
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", "defense-cli")
    rng = np.random.default_rng(0)
    for defense in ("none", "jpeg"):
        for eps in ("0.05", "0.1"):
            for seed in ("0", "1"):
                tags = {"stage": "run", "defense": defense, "attack": "pgd", "dataset": "mnist5k", "model": "small_cnn",
                        "threat_model": "white_box", "attack_strength": "PGD(eps=...)", "check.random_without_eot": "ok"}
                with tracker.run(f"{defense}-{eps}-{seed}", tags) as run:
                    run.params({"defense.name": defense, "attack.eps": eps, "attack.norm": "linf", "seed": seed,
                                "attack.steps": "10"})
                    run.metrics({"robust_accuracy": float(rng.uniform()), "defended_clean_accuracy": float(rng.uniform()),
                                 "n_images": 100.0})
    return tracker


def stored(home: Path) -> pd.DataFrame:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'run'")
    return pd.DataFrame([{"defense": r.data.tags["defense"], "eps": float(r.data.params["attack.eps"]),
                          "value": r.data.metrics["robust_accuracy"]} for r in runs])


def test_pivot_json_and_report_equal_the_store(home, tmp_path):
    log_grid(home)
    out = tmp_path / "report"
    result = invoke_cli("report", f"paths.home={home}", "--rows", "defense", "--cols", "attack.eps", "--out", str(out))
    assert result.exit_code == 0, result.output
    pivot = pd.read_csv(out / "pivot.csv")
    expected = stored(home).groupby(["defense", "eps"])["value"].agg(["mean", "std", "count"]).reset_index()
    merged = pivot.merge(expected, left_on=["defense", "attack.eps"], right_on=["defense", "eps"])
    assert len(merged) == 4 and (merged["count_x"] == 2).all()
    assert np.allclose(merged["mean_x"], merged["mean_y"]) and np.allclose(merged["std_x"], merged["std_y"])
    first = merged.iloc[0]
    assert f"{100 * first.mean_y:.1f} ± {100 * first.std_y:.1f} (n=2)" in (out / "report.md").read_text()

    rows = json.loads((out / "runs.json").read_text())
    assert len(rows) == 8
    for row in rows:
        jsonschema.validate(row, ROW_SCHEMA)
    assert {row["threat_model"] for row in rows} == {"Linf"} and {row["eps"] for row in rows} == {0.05, 0.1}

    curve = out / "eps_curve.png"
    with Image.open(curve) as image:
        assert image.size[0] > 100 and np.asarray(image.convert("L")).std() > 0
    assert not (out / "steps_curve.png").exists()      # one steps value: no curve to draw
    for name in ("report.md", "report.html"):
        assert (out / name).read_text().count("data:image/png;base64,") == 2


def test_the_documented_json_fields_are_the_emitted_ones():
    section = DOCS.read_text().split("## JSON rows")[1].split("\n## ")[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert documented == list(ROW_FIELDS)


def test_an_unknown_key_or_metric_names_the_allowed_ones(home, tmp_path):
    log_grid(home)
    result = invoke_cli("report", f"paths.home={home}", "--cols", "attack.epz", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "'attack.epz'" in result.output and "attack.eps" in result.output
    result = invoke_cli("report", f"paths.home={home}", "--value", "robust", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "robust_accuracy" in result.output


def test_no_runs_is_a_clear_error(home, tmp_path):
    result = invoke_cli("report", f"paths.home={home}", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "no FINISHED evaluation runs" in result.output


@pytest.mark.slow
def test_report_on_a_real_sweep(home, shared_cache, tmp_path):
    sweep = run_cli("run", "-m", "defense=none,jpeg", "attack.eps=0.05,0.1", "attack.steps=3", "dataset.limit=48",
                    "train.epochs=1", f"paths.home={home}", f"paths.cache_dir={shared_cache}", cwd=home)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    from defense_cli.run_search import runs_frame

    frame = runs_frame(f"sqlite:///{home / 'mlflow.db'}", ["defense-cli"])
    (parent,) = set(frame["tags.mlflow.parentRunId"])
    out = tmp_path / "report"
    result = run_cli("report", f"paths.home={home}", "--parent", parent, "--out", str(out), cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    pivot = pd.read_csv(out / "pivot.csv")
    assert len(pivot) == 4 and (pivot["count"] == 1).all()
    for row in pivot.itertuples():
        match = frame[(frame["tags.defense"] == row.defense) & (frame["params.attack.eps"].astype(float) == row[2])]
        assert row.mean == pytest.approx(match["metrics.robust_accuracy"].iloc[0])
    assert (out / "eps_curve.png").stat().st_size > 1000
