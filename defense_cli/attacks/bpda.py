"""Backward Pass Differentiable Approximation (Athalye et al. 2018, section 4.1).

`BPDA(defense)` runs the real defense in the forward pass and, in the backward pass, the gradient
of a surrogate: the identity by default (the defense is treated as g(x) = x), so the attacker's
gradient is the classifier's gradient at the defended input.
"""

from __future__ import annotations

import torch
from torch import nn

from defense_cli.defenses.base import Defense


class BPDAIdentity(torch.autograd.Function):
    """forward: defense(x); backward: the identity (straight-through)."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, defended: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return defended

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return grad_output, None


class DefendedClassifier(nn.Module):
    """classifier(defense(x)) with BPDA gradients through the defense: the white-box target."""

    def __init__(self, classifier: nn.Module, defense: Defense, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.defense = defense
        self.generator = generator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        defended = self.defense(images.detach().clamp(0, 1), generator=self.generator)
        return self.classifier(BPDAIdentity.apply(images, defended))
