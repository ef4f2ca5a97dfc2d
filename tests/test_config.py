"""Every option of every config group composes, validates and builds; bad values are refused."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from defense_cli.attacks import build_attack, build_suite, build_threat_model
from defense_cli.config import GROUPS, compose, conf_dir, group_options, validate
from defense_cli.defenses import build_defense
from defense_cli.errors import ConfigError
from defense_cli.tasks.prepare import check_config

GROUP_OPTIONS = [(group, option) for group in GROUPS if (conf_dir() / group).is_dir()
                 for option in group_options(group)]
REQUIRED = {"dataset=image_folder": ["dataset.root=/nonexistent"], "model=compressed": ["model.entry=/x.pt"],
            "model=saved": ["model.path=/x.pt2", "model.normalization=none"],
            "model=custom": ["model._target_=mypackage.Net", "model.normalization=none"]}
PRIMARY = {"compress": "compress_config"}  # groups composed by their own command's primary config


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_option_composes_and_validates(group, option):
    override = f"{group}={option}"
    cfg = compose([override, *REQUIRED.get(override, [])], config_name=PRIMARY.get(group, "config"))
    validate(cfg)
    assert OmegaConf.select(cfg, f"{group}") is not None or group == "experiment"


@pytest.mark.parametrize("option", list(group_options("defense")))
def test_every_defense_config_instantiates(option):
    cfg = compose([f"defense={option}"])
    assert build_defense(cfg.defense) is not None


@pytest.mark.parametrize("option", list(group_options("attack")))
def test_every_attack_config_instantiates(option):
    cfg = compose([f"attack={option}"])
    suite = build_suite(cfg.attack)
    entries = suite.plan(build_threat_model(cfg.threat_model), build_defense(cfg.defense))
    assert suite.describe(entries, build_defense(cfg.defense))
    if "attacks" not in cfg.attack:
        assert build_attack(cfg.attack).describe()


def test_defaults_are_the_documented_ones():
    cfg = compose()
    assert (cfg.dataset.name, cfg.model.name, cfg.defense.name, cfg.attack.name, cfg.threat_model.name) == (
        "mnist5k", "small_cnn", "none", "pgd", "white_box")


@pytest.mark.parametrize(
    ("override", "named"),
    [("attack.eps=-0.1", "attack.eps"), ("attack.steps=0", "attack.steps"), ("train.lr=0", "train.lr"),
     ("dataset.limit=0", "dataset.limit"), ("train.optimizer=lbfgs", "train.optimizer"),
     ("train.device=tpu", "train.device"), ("train.preprocess=nope", "train.preprocess"),
     ("model.name=alexnet", "model.name")],
)
def test_bad_values_are_refused_with_the_key_named(override, named):
    cfg = compose([override])
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        check_config(cfg)


def test_black_box_source_model_is_checked_before_any_run():
    check_config(compose(["threat_model=black_box"]))
    with pytest.raises(ConfigError, match=r"threat_model\.source\.model\.name"):
        check_config(compose(["threat_model=black_box", "threat_model.source.model.name=alexnet"]))


def test_missing_mandatory_value_is_named():
    cfg = compose(["dataset=image_folder"])
    with pytest.raises(ConfigError, match="dataset.root"):
        check_config(cfg)


def test_unknown_group_is_refused():
    with pytest.raises(ConfigError, match="allowed groups"):
        group_options("nonsense")
