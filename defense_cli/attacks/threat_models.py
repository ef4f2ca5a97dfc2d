"""Threat models: what the attacker knows, hence which model the attack is run against.

As in `shared/GUIDE.md` section 3 and the papers' evaluations:
- white_box: classifier and defense known; gradients pass through the defense with BPDA (identity
  or the defense's surrogate, `threat_model.bpda`), plus EOT over `threat_model.eot_samples` draws
  when the defense is random; each example keeps its highest-loss iterate.
- gray_box: classifier known, defense not; attack the bare classifier, then defend.
- black_box: neither known; gradient attacks transfer from an independently trained source model,
  query-only attacks query the defended target as an oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from defense_cli.attacks.base import Attack, AttackResult
from defense_cli.attacks.bpda import DefendedClassifier, HighestLossIterate
from defense_cli.defenses.base import Defense
from defense_cli.errors import ConfigError

THREAT_MODELS = ("white_box", "gray_box", "black_box")


@dataclass(frozen=True)
class WhiteBoxSettings:
    """How the white-box attacker differentiates through the defense."""

    bpda: str = "identity"      # identity | surrogate
    eot_samples: int = 1        # draws per gradient for random defenses (ignored otherwise)


def check_bpda_mode(defense: Defense, white_box: WhiteBoxSettings) -> None:
    """`bpda=surrogate` needs a defense that defines one (ConfigError otherwise)."""
    if white_box.bpda == "surrogate" and not defense.has_surrogate:
        raise ConfigError(f"threat_model.bpda=surrogate but {type(defense).__name__} defines no surrogate; "
                          "use threat_model.bpda=identity.")


def attack_target(
    threat_model: str,
    attack: Attack,
    classifier: nn.Module,
    defense: Defense,
    source_model: Callable[[], nn.Module] | None = None,
    generator: torch.Generator | None = None,
    white_box: WhiteBoxSettings = WhiteBoxSettings(),
) -> nn.Module:
    """The model `attack` is run against under `threat_model`.

    `source_model` is called only when a black-box transfer attack needs it (it may train one).
    """
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"threat_model={threat_model!r} is unknown; allowed: {', '.join(THREAT_MODELS)}.")
    if threat_model == "white_box":
        check_bpda_mode(defense, white_box)
        eot = white_box.eot_samples if defense.randomized else 1
        return DefendedClassifier(classifier, defense, generator, white_box.bpda, eot)
    if threat_model == "gray_box":
        return classifier
    if not attack.uses_gradients:
        return DefendedClassifier(classifier, defense, generator)
    if source_model is None:
        raise ConfigError("threat_model=black_box needs a source model (threat_model.source)")
    return source_model()


def keeps_highest_loss(target: nn.Module) -> bool:
    """True for an EOT target: a random defense makes the last iterate a noisy choice."""
    return isinstance(target, DefendedClassifier) and target.eot_samples > 1


def run_attack(attack: Attack, target: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator | None = None) -> AttackResult:
    """`attack(target, ...)`; against an EOT target, each example keeps its highest-loss iterate."""
    if not (keeps_highest_loss(target) and attack.uses_gradients):
        return attack(target, images, labels, generator)
    tracker = HighestLossIterate(target, images, labels, attack.norm, attack.eps)
    outcome = attack(tracker, images, labels, generator)
    return AttackResult(tracker.select(outcome.adversarial), outcome.gradient_evaluations, outcome.queries)
