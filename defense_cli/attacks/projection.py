"""Projection onto an eps ball around the clean images intersected with [0, 1], and random starts."""

from __future__ import annotations

import torch


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def l2_norms(delta: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norms, shaped to broadcast against `delta`."""
    return _per_image(delta.flatten(1).norm(p=2, dim=1), delta)


def project(images: torch.Tensor, origin: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The nearest point to `images` within `eps` of `origin` (Linf or L2), clipped to [0, 1]."""
    delta = images - origin
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (origin + delta).clamp(0, 1)


def draw(shape: torch.Size, device: torch.device, generator: torch.Generator | None,
         kind: str = "uniform") -> torch.Tensor:
    """uniform [0, 1), normal or Rademacher (+-1) draws from `generator` on `device`.

    Draws happen on the generator's own device (a CPU generator may serve CUDA images), then move.
    """
    where = generator.device if generator is not None else device
    if kind == "uniform":
        values = torch.rand(shape, generator=generator, device=where)
    elif kind == "normal":
        values = torch.randn(shape, generator=generator, device=where)
    else:
        values = torch.randint(0, 2, shape, generator=generator, device=where).float() * 2 - 1
    return values.to(device)


def random_start(images: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A random point on the eps sphere (Croce and Hein 2020's start), clipped to [0, 1]."""
    if norm == "linf":
        direction = draw(images.shape, images.device, generator) * 2 - 1
        direction = direction / _per_image(direction.flatten(1).abs().amax(1), images).clamp_min(1e-12)
    else:
        direction = draw(images.shape, images.device, generator, "normal")
        direction = direction / l2_norms(direction).clamp_min(1e-12)
    return (images + eps * direction).clamp(0, 1)
