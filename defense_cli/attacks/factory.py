"""Build an attack or an attack suite from its config (`conf/attack/<name>.yaml`)."""

from __future__ import annotations

from omegaconf import DictConfig

from defense_cli.attacks.base import Attack
from defense_cli.attacks.suite import AttackSuite, as_suite
from defense_cli.instantiate import build_from_config


def build_attack(cfg: DictConfig) -> Attack:
    """Instantiate the attack; a bad parameter raises ConfigError naming it."""
    return build_from_config(cfg, "attack", Attack)


def build_suite(cfg: DictConfig) -> AttackSuite:
    """The attack suite `cfg` describes (`attack=adaptive`, a config with nested `attacks`), or the
    single attack of `cfg` as a suite of one named after it."""
    if "attacks" in cfg:
        return build_from_config(cfg, "attack", AttackSuite)
    return as_suite(build_attack(cfg), str(cfg.get("name") or "attack"))
