"""A defense written in differentiable torch ops serves as its own BPDA surrogate (exact gradient)."""

from __future__ import annotations

import pytest
import torch

from defense_cli.attacks.bpda import bpda
from defense_cli.defenses.squeezing import MedianSmoothing


@pytest.mark.parametrize("window", [2, 3, 5])
def test_median_surrogate_gives_the_exact_gradient(window):
    defense = MedianSmoothing(window)
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(window), dtype=torch.float64,
                        requires_grad=True)
    assert defense.has_surrogate
    out = bpda(defense, images, None, "surrogate")
    assert torch.equal(out.detach(), defense(images.detach()))           # the forward is the defense
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), images)
    (identity,) = torch.autograd.grad((bpda(defense, images, None, "identity") * weights).sum(), images)
    assert not torch.allclose(grad, identity)                              # not straight-through
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    step = 1e-7                                                             # median is piecewise linear
    with torch.no_grad():
        change = ((defense.surrogate(images + step * direction, None) - defense.surrogate(images, None))
                  * weights).sum() / step
    assert torch.isclose(change, (grad * direction).sum(), rtol=1e-4)
