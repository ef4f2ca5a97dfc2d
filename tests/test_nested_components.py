"""Component configs nest: the training's preprocessing defense, adversarial attack and its defense,
and a chain's steps are composed by Hydra, overridable key by key, and hashed resolved."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from defense_cli.config import compose, validate
from defense_cli.defenses import build_defense
from defense_cli.errors import ConfigError
from defense_cli.training.classifiers import classifier_key


def key(cfg) -> str:
    return classifier_key(cfg.dataset, cfg.model, cfg.train)


def test_a_separate_preprocessing_defense_keeps_its_own_parameters():
    """`defense.rank=4` changes the test-time defense only; the training one is set on its own."""
    cfg = compose(["defense=splic", "defense@train.preprocess=splic", "defense.rank=4"])
    assert (cfg.defense.rank, cfg.train.preprocess.rank) == (4, 8)
    tuned = compose(["defense=splic", "defense@train.preprocess=splic", "defense.rank=4", "train.preprocess.rank=4"])
    assert tuned.train.preprocess.rank == 4
    assert key(cfg) != key(tuned)


def test_the_same_defense_as_at_test_time_is_an_interpolation():
    cfg = compose(["defense=splic", "train.preprocess=${defense}", "defense.rank=4"])
    assert OmegaConf.to_container(cfg.train, resolve=True)["preprocess"]["rank"] == 4
    spelled_out = compose(["defense=splic", "defense@train.preprocess=splic", "defense.rank=4",
                           "train.preprocess.rank=4"])
    assert key(cfg) == key(spelled_out)   # the key hashes the resolved nested config
    assert key(cfg) != key(compose(["defense=splic", "train.preprocess=${defense}"]))


def test_a_defense_name_where_a_config_belongs_is_refused_with_the_way_to_say_it():
    with pytest.raises(ConfigError, match=r"defense@train\.preprocess=<option>"):
        validate(compose(["train.preprocess=splic"]))


def test_adversarial_attack_parameters_are_overridden_in_place():
    cfg = compose(["attack@train.adversarial=pgd7", "train.adversarial.steps=10"])
    assert (cfg.train.adversarial.steps, round(cfg.train.adversarial.eps * 255, 6)) == (10, 8)
    assert compose().train.adversarial is None


def test_chain_steps_are_composed_defenses_in_order():
    cfg = compose(["defense=chain", "defense@defense.steps.second=bit_depth", "defense.steps.first.quality=40"])
    chain = build_defense(cfg.defense)
    assert [type(step).__name__ for step in chain.steps] == ["JPEG", "BitDepthReduction"]
    assert chain.steps[0].quality == 40


def test_bpda_attack_is_refused_outside_the_white_box_threat_model():
    from defense_cli.tasks.prepare import check_config

    check_config(compose(["defense=jpeg", "attack=bpda"]))
    with pytest.raises(ConfigError, match="threat_model=white_box"):
        check_config(compose(["defense=jpeg", "attack=bpda", "threat_model=gray_box"]))
    check_config(compose(["defense=jpeg", "attack=pgd7", "threat_model=gray_box"]))
