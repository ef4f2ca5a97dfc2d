"""Every paper-table spec in experiments/ is one threat model and each of its runs composes and
validates; every conf/experiment config composes and validates."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from defense_cli.config import compose, conf_dir, group_options
from defense_cli.tasks.prepare import check_config

SPECS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.yaml"))
EXPERIMENTS = sorted(group_options("experiment"))


def spec_runs(spec: dict) -> list[list[str]]:
    """overrides + attack overrides + defense overrides, for every cell of the table."""
    return [[*spec["overrides"], *attack, *defense]
            for attack, defense in itertools.product(spec["attacks"].values(), spec["defenses"].values())]


def test_there_is_a_spec_for_every_seed_table():
    tables = {(path.name[:3], yaml.safe_load(path.read_text())["table"]) for path in SPECS}
    expected = {("000", t) for t in ("3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "4.1", "4.2", "4.3")}
    assert expected <= tables


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_is_one_threat_model_and_its_runs_compose(path: Path):
    spec = yaml.safe_load(path.read_text())
    assert f"threat_model={spec['threat_model']}" in spec["overrides"]
    for label in spec.get("paper_results", {}):
        assert label in spec["attacks"], f"paper_results row {label!r} is not an attack of the spec"
    for overrides in spec_runs(spec):
        assert not any(o.startswith("threat_model=") and o != f"threat_model={spec['threat_model']}"
                       for o in overrides)
        cfg = compose(overrides)
        check_config(cfg)
        assert cfg.threat_model.name == spec["threat_model"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_config_composes_and_validates(name: str):
    cfg = compose([f"experiment={name}"])
    check_config(cfg)
    assert (conf_dir() / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")
