"""Gradient attacks through foolbox 3: FGSM and PGD (Linf and L2).

foolbox draws its random starts from torch's global RNG; each call forks that RNG and seeds it from
the caller's generator, so attacks repeat under a seed without disturbing other code.
"""

from __future__ import annotations

from abc import abstractmethod

import foolbox as fb
import torch
from torch import nn

from defense_cli.attacks.base import Attack, seeded_rng

NORMS = ("linf", "l2")


def _check(eps: float, norm: str) -> None:
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps={eps!r} must be a number >= 0 (pixel scale)")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not allowed; use one of {', '.join(NORMS)}")


class FoolboxAttack(Attack):
    """Runs a foolbox attack at one epsilon with the misclassification criterion."""

    @abstractmethod
    def _foolbox_attack(self) -> fb.attacks.base.Attack:
        """The configured foolbox attack object."""

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
        fmodel = fb.PyTorchModel(model.eval(), bounds=(0, 1), device=images.device)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seeded_rng(generator))
            _, clipped, _ = self._foolbox_attack()(fmodel, images, labels, epsilons=self.eps)
        return clipped


class FGSM(FoolboxAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): x + eps * sign(grad), one step."""

    def __init__(self, eps: float = 0.1, norm: str = "linf", random_start: bool = False) -> None:
        _check(eps, norm)
        self.eps, self.norm, self.random_start = float(eps), norm, random_start

    def _foolbox_attack(self):
        if self.norm == "l2":
            return fb.attacks.L2FastGradientAttack(random_start=self.random_start)
        return fb.attacks.LinfFastGradientAttack(random_start=self.random_start)


class PGD(FoolboxAttack):
    """Projected gradient descent (Madry et al. 2018) with an explicit step size and restarts.

    Restarts re-run the attack from new random starts on the images not yet fooled and keep the
    first adversarial example found for each image.
    """

    def __init__(self, eps: float = 0.1, steps: int = 20, step_size: float = 0.01, norm: str = "linf",
                 random_start: bool = True, restarts: int = 1) -> None:
        _check(eps, norm)
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps={steps!r} must be an integer >= 1")
        if not step_size > 0:
            raise ValueError(f"step_size={step_size!r} must be > 0")
        if not (isinstance(restarts, int) and restarts >= 1):
            raise ValueError(f"restarts={restarts!r} must be an integer >= 1")
        self.eps, self.steps, self.step_size, self.norm = float(eps), steps, float(step_size), norm
        self.random_start, self.restarts = random_start, restarts

    def _foolbox_attack(self):
        kind = fb.attacks.L2PGD if self.norm == "l2" else fb.attacks.LinfPGD
        return kind(abs_stepsize=self.step_size, steps=self.steps, random_start=self.random_start)

    def perturb(self, model, images, labels, generator):  # noqa: D102 - see class docstring
        adversarial = super().perturb(model, images, labels, generator)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                pending = model(adversarial).argmax(1) == labels
            if not pending.any():
                break
            retry = super().perturb(model, images[pending], labels[pending], generator)
            adversarial[pending] = retry
        return adversarial

    def describe(self) -> str:
        return (f"PGD(norm={self.norm}, eps={self.eps:.4g}, steps={self.steps}, "
                f"step_size={self.step_size:.4g}, restarts={self.restarts}, "
                f"random_start={self.random_start})")
