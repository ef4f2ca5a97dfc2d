"""Build a defense from its config (`conf/defense/<name>.yaml`)."""

from __future__ import annotations

from omegaconf import DictConfig

from defense_cli.defenses.base import Defense
from defense_cli.instantiate import build_from_config


def build_defense(cfg: DictConfig) -> Defense:
    """Instantiate the defense (call `prepare` before use); a bad parameter raises ConfigError."""
    return build_from_config(cfg, "defense", Defense)
