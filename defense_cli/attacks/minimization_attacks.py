"""Minimisation attacks through foolbox 3: Carlini-Wagner L2 and DeepFool (Linf and L2).

They search for the smallest perturbation that fools the model. `eps: null` (the default) means
unbounded: the raw result is returned and its perturbation norm is what the run reports. A number
clips the perturbation to that eps ball (foolbox's `clip_perturbation`), so the result may then
no longer fool the model; robust accuracy at that eps is what the run reports. Images not fooled
come back clean (see `FoolboxMinimizationAttack`).
"""

from __future__ import annotations

import foolbox as fb

from defense_cli.attacks.base import eps_text
from defense_cli.parameter_checks import (check_choice, check_eps, check_nonnegative, check_norm, check_positive,
                                         check_positive_int)
from defense_cli.attacks.foolbox_attacks import FoolboxMinimizationAttack

DEEPFOOL_LOSSES = ("logits", "crossentropy")


class CarliniWagner(FoolboxMinimizationAttack):
    """Carlini and Wagner (2017) L2 attack: Adam on tanh-space images, minimising
    ||delta||_2^2 + c * max(Z_y - max_{j != y} Z_j, -kappa), with a binary search over c.

    `001_...` ch. 4 (sec. 4.4): kappa (confidence) 20, 5 binary-search steps, learning rate 0.005,
    1000 iterations.
    """

    norm = "l2"

    def __init__(self, eps: float | None = None, confidence: float = 0.0, binary_search_steps: int = 9,
                 steps: int = 1000, learning_rate: float = 0.01, initial_const: float = 1e-3,
                 abort_early: bool = True) -> None:
        self.eps = check_eps(eps, allow_unbounded=True)
        self.confidence = check_nonnegative("confidence", confidence)
        self.binary_search_steps = check_positive_int("binary_search_steps", binary_search_steps)
        self.steps = check_positive_int("steps", steps)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.initial_const = check_positive("initial_const", initial_const)
        self.abort_early = bool(abort_early)

    def _foolbox_attack(self):
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.learning_rate,
            confidence=self.confidence, initial_const=self.initial_const, abort_early=self.abort_early)

    def describe(self) -> str:
        return (f"CW(norm=l2, eps={eps_text(self.eps)}, confidence={self.confidence:.4g}, "
                f"binary_search_steps={self.binary_search_steps}, steps={self.steps}, "
                f"learning_rate={self.learning_rate:.4g}, initial_const={self.initial_const:.4g})")


class DeepFool(FoolboxMinimizationAttack):
    """DeepFool (Moosavi-Dezfooli et al. 2016): step to the nearest linearised class boundary among
    the `candidates` most likely classes (capped at the
    number of classes by foolbox), times (1 + overshoot), until the label flips.

    `000_...` ch. 3 (sec. 3.5.1): 5 iterations, overshoot 0.02.
    """

    def __init__(self, eps: float | None = None, norm: str = "l2", steps: int = 50, overshoot: float = 0.02,
                 candidates: int = 10, loss: str = "logits") -> None:
        self.eps, self.norm = check_eps(eps, allow_unbounded=True), check_norm(norm)
        self.steps = check_positive_int("steps", steps)
        self.overshoot = check_nonnegative("overshoot", overshoot)
        self.candidates = check_positive_int("candidates", candidates)
        if self.candidates < 2:
            raise ValueError(f"candidates={candidates!r} must be >= 2 (the true class and one other)")
        self.loss = check_choice("loss", loss, DEEPFOOL_LOSSES)

    def _foolbox_attack(self):
        kind = fb.attacks.L2DeepFoolAttack if self.norm == "l2" else fb.attacks.LinfDeepFoolAttack
        return kind(steps=self.steps, candidates=self.candidates, overshoot=self.overshoot, loss=self.loss)

    def describe(self) -> str:
        return (f"DeepFool(norm={self.norm}, eps={eps_text(self.eps)}, steps={self.steps}, "
                f"overshoot={self.overshoot:.4g}, candidates={self.candidates}, loss={self.loss})")

