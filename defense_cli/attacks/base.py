"""The attack interface: configured once, called on a batch, same call shape for every attack.

`attack(model, images, labels, generator=None) -> AttackResult`. `model` maps images in [0, 1] to
logits; the threat model decides what it is (the bare classifier, the classifier behind a BPDA
defense, or a transfer source). Gradient-based attacks set `uses_gradients = True`; query-only
(decision- or score-based) attacks set it False and receive the defended target as an oracle in
the black-box threat model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from defense_cli.classifier_evaluations import draws_per_call


@dataclass
class AttackResult:
    """Adversarial images (same shape as the input, in [0, 1]) and what producing them cost."""

    adversarial: torch.Tensor
    gradient_evaluations: int = 0   # images x backward passes x classifier draws per pass (EOT samples)
    queries: int = 0                # images x forward passes without gradient x draws per pass


class Attack(ABC):
    """Base class of attacks. Perturbations are in [0, 1] pixel scale."""

    uses_gradients: ClassVar[bool] = True
    #: True when the attack is defined by differentiating through the defense (BPDA-PGD): only a
    #: white-box threat model can run it, the others refuse it.
    white_box_only: ClassVar[bool] = False
    norm: str = "linf"
    eps: float | None = 0.0     # None: unbounded (minimisation attacks report the raw perturbation)

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        counter = CountingModel(model)
        adversarial = self.perturb(counter, images, labels, generator)
        return AttackResult(adversarial.detach(), counter.gradient_images, counter.query_images)

    @abstractmethod
    def perturb(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Return adversarial images for one batch."""

    def describe(self) -> str:
        """A short statement of the attack's strength, printed beside every result."""
        eps = "unbounded" if self.eps is None else f"{self.eps:.4g}"
        return f"{type(self).__name__}(norm={self.norm}, eps={eps})"


class CountingModel(nn.Module):
    """Wraps a model and counts images forwarded with and without an input gradient, each times the
    classifier evaluations one image costs (`model.draws_per_call`: the EOT samples, else 1)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.gradient_images = 0
        self.query_images = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count = images.shape[0] * draws_per_call(self.model)
        if torch.is_grad_enabled() and images.requires_grad:
            self.gradient_images += count
        else:
            self.query_images += count
        return self.model(images)


class NoAttack(Attack):
    """Returns the clean images: robust accuracy then equals accuracy."""

    uses_gradients = False

    def perturb(self, model, images, labels, generator):  # noqa: D102 - see Attack.perturb
        return images.clone()

    def describe(self) -> str:
        return "none"


def seeded_rng(generator: torch.Generator | None) -> int:
    """A seed drawn from `generator` for libraries that use torch's global RNG (foolbox)."""
    if generator is None:
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())


def eps_text(eps: float | None) -> str:
    """eps for describe(): 'unbounded' for None."""
    return "unbounded" if eps is None else f"{eps:.4g}"
