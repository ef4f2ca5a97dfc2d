"""Table specs: cells as `table_cell` configs compose to the same config as their overrides, the
config hash ignores only where results go, the reduced setup and --limit replace the right keys,
and the filled table's layout (published values, flags, worst case over attacks)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from defense_cli.config import compose, config_hash
from defense_cli.errors import ConfigError
from defense_cli.paper_table import NOT_RUN, WORST_CASE, layout, markdown
from defense_cli.table_spec import ADAPTIVE_ROW, Cell, TableSpec, cell_overrides, write_cell_group
from defense_cli.tasks.table import TableOptions

SPEC = Path(__file__).resolve().parent / "specs" / "mnist5k_two_by_two.yaml"
MIXED = ("defense=splic", "defense@train.preprocess=splic", "attack=pgd", "attack.eps=${div:8,255}",
         "attack.steps=7", "defense.rank=4")


def test_a_cell_config_composes_like_its_overrides(tmp_path):
    cell = Cell("PGD", "SPLIC", MIXED, None)
    write_cell_group([cell], tmp_path)
    through_group = compose(cell_overrides(tmp_path, [cell.choice]))
    direct = compose(list(MIXED))
    assert through_group.train.preprocess.name == "splic" and through_group.defense.rank == 4
    assert through_group.attack.eps == pytest.approx(8 / 255)
    assert config_hash(through_group) == config_hash(direct)


def test_the_config_hash_ignores_paths_and_mlflow_but_not_the_computation():
    base = config_hash(compose(["attack.eps=0.05"]))
    assert base == config_hash(compose(["attack.eps=0.05", "paths.home=/elsewhere", "mlflow.experiment_name=x",
                                        "mlflow.parent_run_id=abc"]))
    assert base == config_hash(compose(["attack.eps=${div:5,100}"]))      # resolved before hashing
    assert base != config_hash(compose(["attack.eps=0.06"]))
    assert base != config_hash(compose(["attack.eps=0.05", "dataset.limit=64"]))


def test_reduced_setup_and_limit_replace_the_spec_keys(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(SPEC.read_text() + "reduced:\n  overrides: [model=lenet]\n  note: smaller\n")
    spec = TableSpec.load(spec_file)
    common = spec.common_overrides(True, 32)
    assert "model=lenet" in common and "model=small_cnn" not in common and common[-1] == "dataset.limit=32"
    with pytest.raises(ConfigError, match="names no reduced setup"):
        TableSpec.load(SPEC).common_overrides(True, None)


def test_an_experiment_preset_replaces_the_spec_dataset_and_model_and_the_user_keys_win():
    spec = TableSpec.load(Path(__file__).resolve().parents[1] / "experiments" / "000_table4_2_white_box_cifar10.yaml")
    common = spec.common_overrides(False, 200, ["experiment=cifar10_cpu", "threat_model.n_draws=3"])
    assert "dataset=cifar10" not in common and "model=resnet18" not in common and common[-1] == "dataset.limit=200"
    cfg = compose(common)
    assert (cfg.dataset.name, cfg.model.name, cfg.dataset.limit) == ("cifar10_jpeg", "fast_cifar", 200)
    assert cfg.threat_model.name == "white_box" and cfg.threat_model.n_draws == 3
    assert "model=small_cnn" in spec.common_overrides(False, None, ["model=small_cnn"])
    assert "model=resnet18" not in spec.common_overrides(False, None, ["model=small_cnn"])


def test_an_experiment_preset_gives_its_model_to_a_black_box_source_model_too():
    spec = TableSpec.load(Path(__file__).resolve().parents[1] / "experiments" / "000_table3_2_black_box_cifar10.yaml")
    cfg = compose(spec.common_overrides(False, None, ["experiment=cifar10_cpu"]))
    assert (cfg.model.name, cfg.threat_model.source.model.name) == ("fast_cifar", "fast_cifar")
    assert cfg.threat_model.source.model._target_ == cfg.model._target_
    as_written = compose(spec.common_overrides(False, None))
    assert (as_written.model.name, as_written.threat_model.source.model.name) == ("vgg16_bn", "resnet18")
    mine = spec.common_overrides(False, None, ["experiment=cifar10_cpu", "model@threat_model.source.model=lenet"])
    assert compose(mine).threat_model.source.model.name == "lenet"


def frame(rows: list[tuple[str, str, float, float, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"attack": a, "defense": d, "measured": m, "published": p, "flags": f}
                         for a, d, m, p, f in rows])


def test_layout_prints_measured_published_flags_and_the_worst_real_attack():
    cells = frame([("Clean", "JPEG", 90.0, 91.0, ""), ("FGSM", "JPEG", 40.0, 45.5, ""),
                   ("PGD", "JPEG", 20.0, math.nan, "random_without_eot: no EOT"),
                   ("Clean", "None", 99.0, math.nan, ""), ("FGSM", "None", 5.0, 1.0, ""), ("PGD", "None", 7.5, 0.0, "")])
    table = layout(cells, clean_attacks={"Clean"})
    assert list(table.index) == ["Clean", "FGSM", "PGD", WORST_CASE] and list(table.columns) == ["JPEG", "None"]
    assert table.loc["FGSM", "JPEG"] == "40.0 (45.5)" and table.loc["PGD", "JPEG"] == "20.0 !"
    assert table.loc[WORST_CASE, "JPEG"] == "20.0" and table.loc[WORST_CASE, "None"] == "5.0"
    text = markdown(table, "caption", cells)
    assert "- ! PGD / JPEG: random_without_eot: no EOT" in text


def test_a_cell_not_run_says_so_and_its_column_worst_case_is_an_upper_bound():
    cells = frame([("FGSM", "JPEG", 40.0, 45.5, ""), ("PGD", "JPEG", math.nan, 30.0, ""),
                   ("FGSM", "None", math.nan, 1.0, ""), ("PGD", "None", math.nan, 0.0, ""),
                   ("FGSM", "TVM", 12.0, math.nan, ""), ("PGD", "TVM", 3.0, math.nan, "")])
    table = layout(cells, clean_attacks=set())
    assert list(table.columns) == ["JPEG", "None", "TVM"]
    assert table.loc["PGD", "JPEG"] == NOT_RUN and table.loc["FGSM", "JPEG"] == "40.0 (45.5)"
    assert table.loc[WORST_CASE, "JPEG"] == "≤ 40.0"       # PGD may still bring it lower
    assert table.loc[WORST_CASE, "None"] == NOT_RUN and table.loc[WORST_CASE, "TVM"] == "3.0"


def test_one_attack_gets_no_worst_case_row():
    table = layout(frame([("BPDA", "A", 1.0, 2.0, ""), ("BPDA", "B", 3.0, math.nan, "")]), clean_attacks=set())
    assert WORST_CASE not in table.index


def test_a_defense_subset_keeps_the_spec_order_and_an_unknown_label_names_the_known_ones():
    spec = TableSpec.load(SPEC)
    subset = spec.with_defenses(["JPEG"])
    assert [(c.attack, c.defense) for c in subset.cells] == [("FGSM", "JPEG"), ("PGD", "JPEG")]
    assert subset.cells[0].published == 40.0
    with pytest.raises(ConfigError, match=r"no defense 'SPLIC'; its defenses are 'Vanilla', 'JPEG'"):
        spec.with_defenses(["JPEG", "SPLIC"])



def test_an_attack_subset_keeps_the_spec_order_and_an_unknown_label_names_the_known_ones():
    spec = TableSpec.load(SPEC)
    subset = spec.with_attacks(["PGD"]).with_defenses(["JPEG"])
    assert [(c.attack, c.defense) for c in subset.cells] == [("PGD", "JPEG")] and subset.data["cells"] == 1
    assert [c.attack for c in spec.with_attacks(["PGD", "FGSM"]).cells] == ["FGSM", "FGSM", "PGD", "PGD"]
    with pytest.raises(ConfigError, match=r"no attack 'CW'; its attacks are 'FGSM', 'PGD'"):
        spec.with_attacks(["CW"])

def test_under_the_adaptive_suite_each_defense_is_one_white_box_cell_of_the_suite(tmp_path):
    black_box = TableSpec.load(Path(__file__).resolve().parents[1] / "experiments" / "000_table4_1_black_box_cifar10.yaml")
    adaptive = black_box.under_adaptive_suite()
    assert [c.defense for c in adaptive.cells] == list(black_box.data["defenses"])
    assert {c.attack for c in adaptive.cells} == {ADAPTIVE_ROW} and all(c.published is None for c in adaptive.cells)
    common = adaptive.common_overrides(False, 8, ["experiment=cifar10_cpu"])
    assert not [o for o in common if o.startswith("threat_model.source")]   # the black-box keys are dropped
    write_cell_group(adaptive.cells, tmp_path)
    splic_net = next(c for c in adaptive.cells if c.defense == "SPLIC-Net")
    cfg = compose([*common, *cell_overrides(tmp_path, [splic_net.choice])])
    assert cfg.threat_model.name == "white_box" and cfg.attack.name == "adaptive"
    assert cfg.defense.name == "splic" and cfg.train.preprocess.name == "splic" and cfg.dataset.limit == 8


def test_each_setup_writes_its_own_results_folder():
    assert TableOptions().setup_name() == ""
    assert TableOptions(reduced=True).setup_name() == "reduced"
    assert TableOptions(overrides=["experiment=cifar10_cpu", "hydra/launcher=joblib"],
                        adaptive=True).setup_name() == "cifar10_cpu-adaptive"
    assert TableOptions(overrides=["experiment=cifar10_cpu", "threat_model.eot_samples=1", "paths.home=/x",
                                   "defense@train.preprocess=tvm"]).setup_name() == \
        "cifar10_cpu-threat_model.eot_samples=1-defense@train.preprocess=tvm"
