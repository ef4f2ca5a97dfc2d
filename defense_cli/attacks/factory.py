"""Build an attack from its config (`conf/attack/<name>.yaml`)."""

from __future__ import annotations

from omegaconf import DictConfig

from defense_cli.attacks.base import Attack
from defense_cli.instantiate import build_from_config


def build_attack(cfg: DictConfig) -> Attack:
    """Instantiate the attack; a bad parameter raises ConfigError naming it."""
    return build_from_config(cfg, "attack", Attack)
