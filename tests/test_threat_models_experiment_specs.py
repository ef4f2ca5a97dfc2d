"""Every paper-table spec in experiments/ is one threat model; its grid expands, as the Hydra
multirun that `defense-cli table` launches, to the number of cells it declares; each cell composes
through the written `table_cell` group and validates; every conf/experiment config composes."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from defense_cli.config import compose, conf_dir, config_hash, group_options
from defense_cli.table_spec import TableSpec, cell_overrides, write_cell_group
from defense_cli.tasks.prepare import check_config

SPECS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.yaml"))
EXPERIMENTS = sorted(group_options("experiment"))


def test_there_is_a_spec_for_every_seed_table():
    tables = {(path.name[:3], yaml.safe_load(path.read_text())["table"]) for path in SPECS}
    expected = {("000", t) for t in ("3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "4.1", "4.2", "4.3")}
    assert expected <= tables


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_grid_expands_to_its_declared_cells(path: Path, tmp_path: Path):
    spec = TableSpec.load(path)
    write_cell_group(spec.cells, tmp_path)
    sweep = cell_overrides(tmp_path, [cell.choice for cell in spec.cells])
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(sweep), None)
    jobs = [job for batch in batches for job in batch]
    assert len(jobs) == spec.data["cells"] == len(spec.data["attacks"]) * len(spec.data["defenses"])
    assert len({tuple(job) for job in jobs}) == len(jobs)
    assert {path.stem for path in (tmp_path / "table_cell").glob("*.yaml")} == {c.choice for c in spec.cells}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_is_one_threat_model_and_its_cells_compose(path: Path, tmp_path: Path):
    spec = TableSpec.load(path)
    assert f"threat_model={spec.data['threat_model']}" in spec.data["overrides"]
    for label in spec.data.get("paper_results", {}):
        assert label in spec.data["attacks"], f"paper_results row {label!r} is not an attack of the spec"
    write_cell_group(spec.cells, tmp_path)
    setups = [False, True] if spec.reduced else [False]
    for reduced in setups:
        common = spec.common_overrides(reduced, None)
        for cell in spec.cells:
            assert not any(o.startswith("threat_model=") and o != f"threat_model={spec.data['threat_model']}"
                           for o in cell.overrides)
            cfg = compose([*common, *cell_overrides(tmp_path, [cell.choice])])
            check_config(cfg)
            assert cfg.threat_model.name == spec.data["threat_model"]
            _assert_models_are_the_options_they_name(cfg)
    first = spec.cells[0]
    through_group = compose([*spec.common_overrides(False, None), *cell_overrides(tmp_path, [first.choice])])
    as_overrides = compose([*spec.common_overrides(False, None), *first.overrides])
    assert config_hash(through_group) == config_hash(as_overrides)


def _assert_models_are_the_options_they_name(cfg) -> None:
    """Every model node (the classifier, a black-box source) is the `model` option its name says."""
    nodes = [cfg.model, *([cfg.threat_model.source.model] if "source" in cfg.threat_model else [])]
    for node in nodes:
        assert node._target_ == _option_target(node.name), f"model {node.name!r} is built by {node._target_}"


@functools.lru_cache(maxsize=None)
def _option_target(name: str) -> str:
    """The `_target_` of the `model` option `name` (composed once per name, not once per cell)."""
    return compose([f"model={name}"]).model._target_


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_config_composes_and_validates(name: str):
    cfg = compose([f"experiment={name}"])
    check_config(cfg)
    assert (conf_dir() / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")
