"""Decision-based attacks through foolbox 3: Boundary (L2) and HopSkipJump (L2 and Linf).

They see only the model's top-1 decision (no gradients, no scores), so the black-box threat model
gives them the defended target as an oracle. Both start from an adversarial point found by
foolbox's blended-uniform-noise linear search (`init_directions` noise draws, `init_steps` blend
steps), batched over the images, then walk along the boundary towards the clean image. With
`eps: null` the raw result is returned; with a number the perturbation is clipped to that eps ball.
"""

from __future__ import annotations

import warnings

import foolbox as fb
import torch

from defense_cli.attacks.base import eps_text
from defense_cli.parameter_checks import check_eps, check_norm, check_positive, check_positive_int
from defense_cli.attacks.foolbox_attacks import FoolboxMinimizationAttack


class DecisionAttack(FoolboxMinimizationAttack):
    """Shared start: the blended-uniform-noise search for an initial adversarial point.

    The search runs once on the batch; images it cannot fool (foolbox's attacks would raise on
    them) come back clean, the others go on from their starting point.
    """

    uses_gradients = False

    def _set_start(self, init_directions: int, init_steps: int) -> None:
        self.init_directions = check_positive_int("init_directions", init_directions)
        self.init_steps = check_positive_int("init_steps", init_steps)

    def _attack(self, fmodel, images, labels):
        search = fb.attacks.LinearSearchBlendedUniformNoiseAttack(directions=self.init_directions,
                                                                  steps=self.init_steps)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*failed to draw sufficient random inputs.*")
            starts = search.run(fmodel, images, fb.criteria.Misclassification(labels))
        with torch.no_grad():
            started = fmodel(starts).argmax(1) != labels
        result = images.clone()
        if started.any():
            result[started] = super()._attack(fmodel, images[started], labels[started],
                                              starting_points=starts[started])
        return result


class Boundary(DecisionAttack):
    """Boundary attack (Brendel et al. 2018): a random walk along the decision boundary with
    orthogonal (spherical) and towards-the-source steps whose sizes adapt to their success rate.

    `003_...` sec. 3.1: 1000 steps.
    """

    norm = "l2"

    def __init__(self, eps: float | None = None, steps: int = 1000, spherical_step: float = 0.01,
                 source_step: float = 0.01, step_adaptation: float = 1.5, init_directions: int = 1000,
                 init_steps: int = 1000) -> None:
        self.eps = check_eps(eps, allow_unbounded=True)
        self.steps = check_positive_int("steps", steps)
        self.spherical_step = check_positive("spherical_step", spherical_step)
        self.source_step = check_positive("source_step", source_step)
        self.step_adaptation = check_positive("step_adaptation", step_adaptation)
        if self.step_adaptation <= 1:
            raise ValueError(f"step_adaptation={step_adaptation!r} must be > 1")
        self._set_start(init_directions, init_steps)

    def _foolbox_attack(self):
        return fb.attacks.BoundaryAttack(steps=self.steps,
                                         spherical_step=self.spherical_step, source_step=self.source_step,
                                         step_adaptation=self.step_adaptation)

    def describe(self) -> str:
        return (f"Boundary(norm=l2, eps={eps_text(self.eps)}, steps={self.steps}, "
                f"spherical_step={self.spherical_step:.4g}, source_step={self.source_step:.4g}, "
                f"init=blended_noise({self.init_directions} directions, {self.init_steps} steps))")


class HopSkipJump(DecisionAttack):
    """HopSkipJumpAttack (Chen, Jordan and Wainwright 2020): binary search to the boundary, a
    Monte-Carlo estimate of the boundary's normal from decisions only, a geometric step search."""

    def __init__(self, eps: float | None = None, norm: str = "l2", steps: int = 64,
                 initial_gradient_eval_steps: int = 100, max_gradient_eval_steps: int = 10000,
                 gamma: float = 1.0, init_directions: int = 1000, init_steps: int = 1000) -> None:
        self.eps, self.norm = check_eps(eps, allow_unbounded=True), check_norm(norm)
        self.steps = check_positive_int("steps", steps)
        self.initial_gradient_eval_steps = check_positive_int("initial_gradient_eval_steps",
                                                              initial_gradient_eval_steps)
        self.max_gradient_eval_steps = check_positive_int("max_gradient_eval_steps", max_gradient_eval_steps)
        if self.initial_gradient_eval_steps > self.max_gradient_eval_steps:
            raise ValueError(f"initial_gradient_eval_steps={initial_gradient_eval_steps!r} must be <= "
                             f"max_gradient_eval_steps={max_gradient_eval_steps!r}")
        self.gamma = check_positive("gamma", gamma)
        self._set_start(init_directions, init_steps)

    def _foolbox_attack(self):
        return fb.attacks.HopSkipJumpAttack(steps=self.steps,
                                            initial_gradient_eval_steps=self.initial_gradient_eval_steps,
                                            max_gradient_eval_steps=self.max_gradient_eval_steps,
                                            gamma=self.gamma, constraint=self.norm)

    def describe(self) -> str:
        return (f"HopSkipJump(norm={self.norm}, eps={eps_text(self.eps)}, steps={self.steps}, "
                f"gradient_eval_steps={self.initial_gradient_eval_steps}..{self.max_gradient_eval_steps}, "
                f"init=blended_noise({self.init_directions} directions, {self.init_steps} steps))")
