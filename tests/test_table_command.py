"""`defense-cli table` on a small real spec (mnist5k, 2 attacks x 2 defenses, --limit 64): one
parent, one child per cell, the written table holds the stored metrics, a second call runs
nothing, a call for one column keeps the other in the table, a cell deleted from the store is run
again, and --rerun runs every cell again. Bad specs are refused before any write."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import invoke_cli, run_cli, runs_in

SPEC = Path(__file__).resolve().parent / "specs" / "mnist5k_two_by_two.yaml"


def evaluation_runs(home: Path) -> dict[str, object]:
    return {run.info.run_id: run for run in runs_in(home) if run.data.tags.get("stage") == "run"}


@pytest.mark.slow
def test_table_runs_each_cell_once_and_reuses_finished_cells(home, shared_cache):
    spec = home / SPEC.name
    shutil.copy(SPEC, spec)
    args = ("table", str(spec), "--limit", "64", f"paths.home={home}", f"paths.cache_dir={shared_cache}")
    result = run_cli(*args, cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = [run for run in runs_in(home) if run.data.tags.get("table") == spec.stem]
    assert parent.info.status == "FINISHED"
    children = {run_id: run for run_id, run in evaluation_runs(home).items()
                if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(children) == 4 and all(run.info.status == "FINISHED" for run in children.values())
    assert {(r.data.params["attack.name"], r.data.params["defense.name"]) for r in children.values()} == {
        ("fgsm", "none"), ("fgsm", "jpeg"), ("pgd", "none"), ("pgd", "jpeg")}

    folder = home / "results" / spec.stem
    cells = pd.read_csv(folder / "table.csv")
    markdown = (folder / "table.md").read_text()
    assert set(cells["run_id"]) == set(children)
    for row in cells.itertuples():
        stored = children[row.run_id].data.metrics
        assert row.measured == pytest.approx(100 * stored["robust_accuracy"])
        assert row.n_images == stored["n_images"] == 64
        assert f"{row.measured:.1f}" in markdown
    vanilla_fgsm = cells[(cells.attack == "FGSM") & (cells.defense == "Vanilla")].iloc[0]
    assert f"{vanilla_fgsm.measured:.1f} (10.0)" in markdown and "64 test images of mnist5k" in markdown
    worst = cells[cells.defense == "JPEG"].measured.min()
    assert "worst case over attacks" in markdown and f"{worst:.1f}" in markdown
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"table.md", "table.csv", "heatmap.png"}
    assert (folder / "heatmap.png").stat().st_size > 1000

    again = run_cli(*args, cwd=home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cells run: 0, reused: 4" in again.stdout
    assert set(evaluation_runs(home)) == set(children)

    one_column = run_cli(*args, "--defenses", "JPEG", cwd=home)
    assert one_column.returncode == 0, one_column.stderr[-3000:]
    assert "cells run: 0, reused: 2" in one_column.stdout
    assert set(pd.read_csv(folder / "table.csv")["run_id"]) == set(children)   # Vanilla's column stays

    deleted = cells.run_id.iloc[0]
    client.delete_run(deleted)
    third = run_cli(*args, cwd=home)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "cells run: 1, reused: 3" in third.stdout
    (new,) = set(evaluation_runs(home)) - set(children)
    assert evaluation_runs(home)[new].data.tags["config_hash"] == children[deleted].data.tags["config_hash"]

    before_rerun = set(evaluation_runs(home))
    forced = run_cli(*args, "--rerun", cwd=home)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "cells run: 4, reused: 0" in forced.stdout
    rerun = {run_id: run for run_id, run in evaluation_runs(home).items() if run_id not in before_rerun}
    assert len(rerun) == 4 and all(run.info.status == "FINISHED" for run in rerun.values())
    assert set(pd.read_csv(folder / "table.csv")["run_id"]) == set(rerun)   # the table shows the new runs


def test_a_spec_that_miscounts_its_cells_is_refused_before_any_write(home, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(SPEC.read_text().replace("cells: 4", "cells: 5"))
    result = invoke_cli("table", str(spec), f"paths.home={home}")
    assert result.exit_code == 2
    assert "declares cells: 5" in result.output and "make 4" in result.output
    assert runs_in(home) == [] and not (tmp_path / "results").exists()


def test_a_missing_spec_names_the_path(home):
    result = invoke_cli("table", str(home / "nope.yaml"), f"paths.home={home}")
    assert result.exit_code == 2 and "nope.yaml" in result.output and "does not exist" in result.output


def test_an_unknown_defense_label_is_refused_before_any_write(home):
    result = invoke_cli("table", str(SPEC), "--defenses", "JPEG,Nope", f"paths.home={home}")
    assert result.exit_code == 2
    assert "no defense 'Nope'" in result.output and "'Vanilla', 'JPEG'" in result.output
    assert runs_in(home) == []



@pytest.mark.parametrize("extra, named", [(["--attacks", "PGD,CW"], "no attack 'CW'"),
                                          (["--attacks", "PGD", "--adaptive"], "--attacks PGD and --adaptive")])
def test_an_unknown_attack_label_or_attacks_with_adaptive_is_refused_before_any_write(home, extra, named):
    result = invoke_cli("table", str(SPEC), *extra, f"paths.home={home}")
    assert result.exit_code == 2 and named in result.output
    assert runs_in(home) == []


def test_a_key_no_cell_has_is_refused_naming_it_and_leaves_no_work_folder(home):
    result = invoke_cli("table", str(SPEC), "--adaptive", "attack.attacks.apgd_t.nope=1", f"paths.home={home}")
    assert result.exit_code == 2 and "attack.attacks.apgd_t.nope" in result.output
    assert runs_in(home) == [] and not list((home / "outputs").rglob("*.yaml"))


@pytest.mark.slow
def test_a_defense_under_the_adaptive_suite_gets_its_own_folder_and_one_suite_cell(home, shared_cache):
    """Keys that only the suite has (its budget, one attack's steps) reach the cell and name the folder."""
    spec = home / SPEC.name
    shutil.copy(SPEC, spec)
    suite_keys = ["attack.eps=0.2", "attack.attacks.apgd_t.steps=2"]
    result = run_cli("table", str(spec), "--limit", "16", "--adaptive", "--defenses", "JPEG", *suite_keys,
                     f"paths.home={home}", f"paths.cache_dir={shared_cache}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    (child,) = evaluation_runs(home).values()
    assert child.data.params["attack.name"] == "adaptive" and child.data.params["defense.name"] == "jpeg"
    assert child.data.params["threat_model.name"] == "white_box"
    assert child.data.params["attack.attacks.apgd_ce.eps"] == "0.2" and child.data.params["attack.attacks.apgd_t.steps"] == "2"
    markdown = (home / "results" / spec.stem / "-".join([*suite_keys, "adaptive"]) / "table.md").read_text()
    assert "under the adaptive attack suite" in markdown and "Adaptive (white-box)" in markdown
    assert f"{100 * child.data.metrics['robust_accuracy']:.1f}" in markdown
    assert "1 of 2 cells not run yet" in markdown      # Vanilla's column waits for its own run
    cells = pd.read_csv(home / "results" / spec.stem / "-".join([*suite_keys, "adaptive"]) / "table.csv")
    assert list(cells["defense"]) == ["Vanilla", "JPEG"] and cells["measured"].isna().tolist() == [True, False]
    assert not (home / "results" / spec.stem / "table.md").exists()
