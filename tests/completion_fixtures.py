"""Shared inputs of the completion tests: smooth exactly-low-rank matrices and a real image."""

from __future__ import annotations

import math

import torch


def smooth_low_rank(batch: int, n: int = 32, rank: int = 3, seed: int = 0,
                    observed_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, 1, n, n) float64 matrices of rank exactly `rank`, built from low-frequency cosines,
    and a Bernoulli(observed_fraction) observation mask."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(0, 1, n, dtype=torch.float64)
    freqs = torch.arange(1, 4, dtype=torch.float64)

    def factor() -> torch.Tensor:
        coef = torch.randn(batch, rank, 3, generator=g, dtype=torch.float64)
        phase = torch.rand(batch, rank, 3, generator=g, dtype=torch.float64) * 2 * math.pi
        return (coef[..., None] * torch.cos(math.pi * freqs[:, None] * grid + phase[..., None])).sum(-2)

    matrices = (factor().mT @ factor() / rank)[:, None]
    mask = torch.rand(batch, 1, n, n, generator=g) < observed_fraction
    return matrices, mask


def relative_error(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (estimate - truth).flatten(1).norm(dim=1) / truth.flatten(1).norm(dim=1)


def real_image(size: int = 32, name: str = "astronaut") -> torch.Tensor:
    """A colour image bundled with scikit-image, block-averaged to (1, 3, size, size) in [0, 1]."""
    from skimage import data

    pixels = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).double() / 255
    return torch.nn.functional.adaptive_avg_pool2d(pixels[None], size)
