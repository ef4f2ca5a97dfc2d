"""Random pixel masks of the completion defenses, drawn from a torch.Generator on the images' device."""

from __future__ import annotations

import torch


def generator_for(images: torch.Tensor, generator: torch.Generator | None) -> torch.Generator:
    """`generator`, or a freshly seeded one on the images' device when None."""
    if generator is not None:
        return generator
    fresh = torch.Generator(device=images.device)
    fresh.seed()
    return fresh


def bernoulli_mask(shape: tuple[int, ...], keep: torch.Tensor | float, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Boolean mask, each entry True with probability `keep` (a float or a tensor broadcast to shape)."""
    return torch.rand(shape, generator=generator, device=device) < keep


def exact_fraction_mask(shape: tuple[int, ...], fraction: float, generator: torch.Generator,
                        device: torch.device) -> torch.Tensor:
    """Boolean mask over the last two axes with exactly round(fraction * h * w) True entries per slice."""
    *lead, height, width = shape
    scores = torch.rand((*lead, height * width), generator=generator, device=device)
    count = round(fraction * height * width)
    ranks = scores.argsort(-1).argsort(-1)
    return (ranks < count).reshape(shape)
