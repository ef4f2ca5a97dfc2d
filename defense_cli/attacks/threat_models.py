"""Threat models: what the attacker knows, hence which model the attack is run against.

As in `shared/GUIDE.md` section 3 and the papers' evaluations: one class per threat model
(`WhiteBox`, `GrayBox`, `BlackBox`), built from `conf/threat_model/<name>.yaml` by `_target_`.
Under EOT each example keeps its highest-loss iterate (`run_attack`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from defense_cli.attacks.base import Attack, AttackResult
from defense_cli.attacks.bpda import BPDA_MODES, DefendedClassifier, HighestLossIterate
from defense_cli.attacks.trace import IterateTrace
from defense_cli.defenses.base import Defense
from defense_cli.errors import ConfigError
from defense_cli.instantiate import build_from_config
from defense_cli.parameter_checks import check_choice, check_int, check_positive_int

class ThreatModel(ABC):
    """What the attacker knows; `target` returns the model the attack is run against.

    A new threat model is one subclass + one YAML file in `conf/threat_model/` naming it in
    `_target_`. `n_draws`: independent draws of a random defense to report robust accuracy over.
    """

    def __init__(self, n_draws: int) -> None:
        self.n_draws = check_positive_int("n_draws", n_draws)

    @abstractmethod
    def target(self, attack: Attack, classifier: nn.Module, defense: Defense,
               source_model: Callable[[], nn.Module] | None = None,
               generator: torch.Generator | None = None) -> nn.Module:
        """The model `attack` is run against. `source_model` is called only when a transfer attack
        needs it (it may train one)."""

    def check(self, attack: Attack, defense: Defense) -> None:
        """Raise ConfigError when this threat model cannot run `attack` against `defense`."""
        if attack.white_box_only:
            raise ConfigError(f"{attack.describe()} differentiates through the defense (BPDA), which only a white-box "
                              f"attacker can do; use threat_model=white_box, or attack=pgd7 for the same PGD "
                              f"under {type(self).__name__}.")

    def describe(self, attack: Attack, defense: Defense) -> str:
        """The attack's description plus how it went through the defense."""
        return attack.describe()


class WhiteBox(ThreatModel):
    """Classifier and defense known: gradients go through the defense with BPDA (`bpda`: identity or
    the defense's surrogate), plus EOT over `eot_samples` draws when the defense is random (Athalye
    et al. 2018, sections 4.1 and 4.3)."""

    def __init__(self, bpda: str, eot_samples: int, n_draws: int) -> None:
        super().__init__(n_draws)
        self.bpda = check_choice("bpda", bpda, BPDA_MODES)
        self.eot_samples = check_positive_int("eot_samples", eot_samples)

    def check(self, attack: Attack, defense: Defense) -> None:
        """`bpda=surrogate` needs a defense that defines one."""
        if self.bpda == "surrogate" and not defense.has_surrogate:
            raise ConfigError(f"threat_model.bpda=surrogate but {type(defense).__name__} defines no surrogate; "
                              "use threat_model.bpda=identity.")

    def eot(self, defense: Defense) -> int:
        """EOT samples per gradient: `eot_samples` for a random defense, 1 for a deterministic one."""
        return self.eot_samples if defense.randomized else 1

    def target(self, attack, classifier, defense, source_model=None, generator=None):
        self.check(attack, defense)
        return DefendedClassifier(classifier, defense, generator, self.bpda, self.eot(defense))

    def describe(self, attack: Attack, defense: Defense) -> str:
        if not attack.uses_gradients:
            return attack.describe()
        return f"{attack.describe()} + BPDA({self.bpda}), EOT samples={self.eot(defense)}"

    def with_eot_samples(self, eot_samples: int) -> WhiteBox:
        return WhiteBox(self.bpda, eot_samples, self.n_draws)

    def with_bpda(self, bpda: str) -> WhiteBox:
        return WhiteBox(bpda, self.eot_samples, self.n_draws)


class GrayBox(ThreatModel):
    """Classifier known, defense not: attack the bare classifier, then defend."""

    def target(self, attack, classifier, defense, source_model=None, generator=None):
        return classifier


class BlackBox(ThreatModel):
    """Neither known: gradient attacks transfer from an independently trained source model
    (`source.model` trained under `source.train_seed`), query-only attacks query the defended
    target as an oracle."""

    def __init__(self, source: dict[str, Any], n_draws: int) -> None:
        super().__init__(n_draws)
        if not isinstance(source, dict) or not isinstance(source.get("model"), dict):
            raise ValueError(f"source={source!r} must hold a model config (source.model) and source.train_seed")
        check_int("source.train_seed", source.get("train_seed"), 0)
        self.source = source

    def target(self, attack, classifier, defense, source_model=None, generator=None):
        if not attack.uses_gradients:
            return DefendedClassifier(classifier, defense, generator)
        if source_model is None:
            raise ConfigError("threat_model=black_box needs a source model (threat_model.source)")
        return source_model()


def build_threat_model(cfg: DictConfig) -> ThreatModel:
    """The threat model `cfg` names in `_target_` (nested model configs are passed as plain dicts)."""
    return build_from_config(cfg, "threat_model", ThreatModel, _recursive_=False)


def keeps_highest_loss(target: nn.Module) -> bool:
    """True for an EOT target: a random defense makes the last iterate a noisy choice."""
    return isinstance(target, DefendedClassifier) and target.eot_samples > 1


def run_attack(attack: Attack, target: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator | None = None, trace: IterateTrace | None = None) -> AttackResult:
    """`attack(target, ...)`; against an EOT target, each example keeps its highest-loss iterate.
    `trace`, an `IterateTrace` around `target`, records the iterates when given."""
    model = target if trace is None else trace
    if not (keeps_highest_loss(target) and attack.uses_gradients):
        return attack(model, images, labels, generator)
    tracker = HighestLossIterate(model, images, labels, attack.norm, attack.eps)
    outcome = attack(tracker, images, labels, generator)
    return AttackResult(tracker.select(outcome.adversarial), outcome.gradient_evaluations, outcome.queries)
