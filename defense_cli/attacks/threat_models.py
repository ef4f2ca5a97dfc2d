"""Threat models: what the attacker knows, hence which model the attack is run against.

As in `shared/GUIDE.md` section 3 and the papers' evaluations:
- white_box: classifier and defense known; gradients pass through the defense with BPDA.
- gray_box: classifier known, defense not; attack the bare classifier, then defend.
- black_box: neither known; gradient attacks transfer from an independently trained source model,
  query-only attacks query the defended target as an oracle.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from defense_cli.attacks.base import Attack
from defense_cli.attacks.bpda import DefendedClassifier
from defense_cli.defenses.base import Defense
from defense_cli.errors import ConfigError

THREAT_MODELS = ("white_box", "gray_box", "black_box")


def attack_target(
    threat_model: str,
    attack: Attack,
    classifier: nn.Module,
    defense: Defense,
    source_model: Callable[[], nn.Module] | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """The model `attack` is run against under `threat_model`.

    `source_model` is called only when a black-box transfer attack needs it (it may train one).
    """
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"threat_model={threat_model!r} is unknown; allowed: {', '.join(THREAT_MODELS)}.")
    if threat_model == "white_box":
        return DefendedClassifier(classifier, defense, generator)
    if threat_model == "gray_box":
        return classifier
    if not attack.uses_gradients:
        return DefendedClassifier(classifier, defense, generator)
    if source_model is None:
        raise ConfigError("threat_model=black_box needs a source model (threat_model.source)")
    return source_model()
