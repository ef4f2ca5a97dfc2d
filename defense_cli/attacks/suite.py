"""Attack suites: AutoAttack's cascade with the per-example worst case (Croce and Hein 2020,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
ICML, sec. 4: the attacks run in order, each on the points the previous ones left robust, and a
point's result is the first attack that breaks it).

A suite is a `_target_` class whose `attacks` are nested attack config nodes (each with its own
strength), run in their order under the run's threat model (`plan`). Robustness is judged on the
defended classifier by a `Judge`: for a random defense a point stays robust only if it is
classified correctly under every one of `n_draws` fresh draws, and a point broken by any attack in
any draw is never attacked or counted again. `cascade: false` runs every attack on all the points
the defense classifies correctly, so each attack's own robust accuracy is known as well.

Where the defense has a differentiable surrogate and the threat model is white-box, the plan adds
the `surrogate_attack` once more with `threat_model.bpda=surrogate` (BPDA through the surrogate).
`eot_samples`, when set, replaces the white-box threat model's EOT samples for the suite's attacks.
`eps`, when set, is the suite's one budget, as AutoAttack has one: every attack of the suite must use
it (`conf/attack/adaptive.yaml` interpolates it into each, so `attack.eps=...` moves them together),
and an attack left at another budget is a config error rather than a silently mixed suite.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from defense_cli.attacks.base import Attack
from defense_cli.attacks.bpda import DefendedClassifier, defense_steps
from defense_cli.attacks.checkpoint import BatchCheckpoint, restored
from defense_cli.attacks.threat_models import ThreatModel, WhiteBox, run_attack
from defense_cli.attacks.trace import IterateTrace
from defense_cli.defenses.base import Defense
from defense_cli.indicators import incomplete_optimisation
from defense_cli.parameter_checks import check_eps, check_positive_int
from defense_cli.progress import progress

#: (adversarial images, labels) -> (B,) True where the defended classifier is right under every draw
Judge = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: `broken_by` of a point the defense already misclassifies clean, and of a point no attack broke
CLEAN, UNBROKEN = -2, -1
#: tolerance of the incomplete-optimisation indicator (Pintor et al. 2022, sec. 3)
LOSS_TOLERANCE = 0.05


def _common_budget(eps: float, attacks: dict[str, Attack]) -> float:
    """`eps`, after checking that every bounded gradient attack of the suite uses it (a query or
    no-op attack carries no budget of the suite's; `NoAttack.eps` is 0)."""
    for name, attack in attacks.items():
        if attack.eps is not None and attack.uses_gradients and not math.isclose(attack.eps, eps, rel_tol=1e-9):
            raise ValueError(f"attacks.{name}.eps={attack.eps:.6g} differs from the suite's eps={eps:.6g}; set the "
                             f"suite's eps (attack.eps=...) to move every attack's budget, not one attack's")
    return eps


@dataclass
class SuiteEntry:
    """One attack of a suite and the threat model it runs under."""

    name: str
    attack: Attack
    threat_model: ThreatModel

    def describe(self, defense: Defense) -> str:
        return f"{self.name}: {self.threat_model.describe(self.attack, defense)}"


@dataclass
class SuiteOutcome:
    """Per example: the adversarial image kept, whether it is still robust, which entry broke it."""

    adversarial: torch.Tensor
    robust: torch.Tensor
    broken_by: torch.Tensor
    robust_under: dict[str, torch.Tensor] = field(default_factory=dict)
    iterate_fooled: torch.Tensor | None = None
    incomplete: list[torch.Tensor] = field(default_factory=list)
    surrogate_fooled: list[torch.Tensor] = field(default_factory=list)
    target_robust: list[torch.Tensor] = field(default_factory=list)
    gradient_evaluations: int = 0
    queries: int = 0
    resumed_attacks: int = 0      # attacks restored from a checkpoint instead of run
    resumed_seconds: float = 0.0  # the attack seconds they took when they ran


class AttackSuite:
    """A list of attacks run as a cascade (or independently) with the per-example worst case."""

    def __init__(self, attacks: dict[str, Attack], cascade: bool = True, surrogate_attack: str | None = None,
                 eot_samples: int | None = None, eps: float | None = None) -> None:
        if not isinstance(attacks, dict) or not attacks:
            raise ValueError(f"attacks={attacks!r} must be a non-empty mapping of names to attack configs")
        bad = [name for name, attack in attacks.items() if not isinstance(attack, Attack)]
        if bad:
            raise ValueError(f"attacks.{bad[0]} is not an attack config (it needs a _target_ naming an Attack class)")
        if surrogate_attack is not None and surrogate_attack not in attacks:
            raise ValueError(f"surrogate_attack={surrogate_attack!r} is not allowed; use one of "
                             f"{', '.join(attacks)} or null")
        if not isinstance(cascade, bool):
            raise ValueError(f"cascade={cascade!r} must be true or false")
        self.attacks, self.cascade, self.surrogate_attack = attacks, cascade, surrogate_attack
        self.eot_samples = None if eot_samples is None else check_positive_int("eot_samples", eot_samples)
        self.eps = None if eps is None else _common_budget(check_eps(eps), attacks)

    def plan(self, threat_model: ThreatModel, defense: Defense) -> list[SuiteEntry]:
        """The entries run under `threat_model` (white-box with the suite's `eot_samples` when set), in
        order, plus the surrogate entry where it applies."""
        if self.eot_samples is not None and isinstance(threat_model, WhiteBox):
            threat_model = threat_model.with_eot_samples(self.eot_samples)
        entries = [SuiteEntry(name, attack, threat_model) for name, attack in self.attacks.items()]
        if (self.surrogate_attack is not None and isinstance(threat_model, WhiteBox) and defense.has_surrogate
                and threat_model.bpda != "surrogate"):
            entries.append(SuiteEntry(f"{self.surrogate_attack}_surrogate", self.attacks[self.surrogate_attack],
                                      threat_model.with_bpda("surrogate")))
        for entry in entries:
            entry.threat_model.check(entry.attack, defense)
        return entries

    def run(self, entries: list[SuiteEntry], target_for: Callable[[SuiteEntry], nn.Module], images: torch.Tensor,
            labels: torch.Tensor, judge: Judge, generator: torch.Generator | None = None,
            checkpoint: BatchCheckpoint | None = None) -> SuiteOutcome:
        """Attack one batch. `target_for(entry)` is the model the entry attacks. With a `checkpoint`,
        the outcome is stored after each attack, and a stored one is resumed after its last attack.
        A progress line per attack names it, the points it attacked and the points still robust."""
        begin = time.perf_counter()
        start = judge(images, labels)
        outcome = self._resume(checkpoint, images, generator) or SuiteOutcome(
            images.clone(), start.clone(), torch.where(start, UNBROKEN, CLEAN).to(labels.device),
            iterate_fooled=torch.zeros_like(start))
        done = outcome.resumed_attacks
        bar = progress(range(done, len(entries)), len(entries) - done, f"attack suite on {len(images)} images",
                       "attack")
        for index in bar:
            entry = entries[index]
            pending = torch.nonzero(outcome.robust if self.cascade else start).squeeze(1)
            robust_here = torch.zeros_like(start)
            if pending.numel():
                robust_here[pending] = self._attack(index, entry, target_for(entry), images[pending],
                                                    labels[pending], judge, generator, outcome, pending)
            outcome.robust_under[entry.name] = outcome.robust.clone() if self.cascade else robust_here
            bar.set_postfix(attack=entry.name, attacked=pending.numel(), robust=int(outcome.robust.sum()))
            if checkpoint is not None:
                spent = outcome.resumed_seconds + time.perf_counter() - begin
                checkpoint.save(index + 1, outcome, generator, spent)
        return outcome

    @staticmethod
    def _resume(checkpoint: BatchCheckpoint | None, images: torch.Tensor,
                generator: torch.Generator | None) -> SuiteOutcome | None:
        """The outcome stored by `checkpoint` (its attacks done counted in `resumed_attacks`), with
        the generator set to its state then; None when there is none."""
        stored = None if checkpoint is None else checkpoint.load()
        if stored is None:
            return None
        if generator is not None and stored.generator_state is not None:
            generator.set_state(stored.generator_state)
        fields = restored(stored.outcome, images.device)
        return SuiteOutcome(**{**fields, "resumed_attacks": stored.done, "resumed_seconds": stored.seconds})

    @staticmethod
    def _attack(index: int, entry: SuiteEntry, target: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                judge: Judge, generator, outcome: SuiteOutcome, pending: torch.Tensor) -> torch.Tensor:
        """Run entry `index` on the pending points; keep each point's first break (else this
        attack's output while it stays robust); return the pending points' robust mask."""
        trace = IterateTrace(target, images, labels)
        result = run_attack(entry.attack, target, images, labels, generator, trace)
        robust = judge(result.adversarial, labels)
        alive = outcome.robust[pending]   # a point broken earlier keeps its first adversarial image
        outcome.adversarial[pending[alive]] = result.adversarial[alive]
        outcome.broken_by[pending[alive & ~robust]] = index
        outcome.robust[pending] = alive & robust
        outcome.iterate_fooled[pending] |= trace.fooled
        outcome.gradient_evaluations += result.gradient_evaluations
        outcome.queries += result.queries
        if entry.attack.uses_gradients:   # indicators 4 and 5 read the points this attack failed on
            outcome.incomplete.append(incomplete_optimisation(trace.loss_trace(), LOSS_TOLERANCE)[robust])
            with torch.no_grad():
                fooled = surrogate_logits(target, result.adversarial, generator).argmax(1) != labels
            outcome.surrogate_fooled.append(fooled)
            outcome.target_robust.append(robust)
        return robust

    def describe(self, entries: list[SuiteEntry], defense: Defense) -> str:
        mode = "cascade" if self.cascade else "independent"
        return f"suite ({mode}): " + "; ".join(entry.describe(defense) for entry in entries)


def surrogate_logits(target: nn.Module, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Logits of the model whose gradient the attack followed: for a BPDA target the classifier on
    the surrogate of the defense (the identity, or each step's `surrogate`), else the target."""
    if not isinstance(target, DefendedClassifier):
        return target(images)
    out = images
    if target.bpda_mode == "surrogate":
        for step in defense_steps(target.defense):
            out = step.surrogate(out, generator)
    return target.classifier(out)


def as_suite(attack: Attack | AttackSuite, name: str) -> AttackSuite:
    """A suite as is; a single attack as a suite of one (named `name`)."""
    return attack if isinstance(attack, AttackSuite) else AttackSuite({name: attack})
