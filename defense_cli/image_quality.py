"""Reconstruction quality of a defense: PSNR and SSIM per image, batched.

SSIM follows Wang et al. (2004), eq. 13, with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03 and data range 1, averaged over channels (the convention of scikit-image with
`gaussian_weights=True`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) batches in [0, 1]; +inf for identical images."""
    mse = (reference - estimate).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def mean_psnr(values: torch.Tensor) -> float:
    """Mean PSNR over images the defense changed; +inf when it changed none."""
    finite = values[torch.isfinite(values)]
    return finite.float().mean().item() if finite.numel() else float("inf")


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(reference: torch.Tensor, estimate: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM of (B, C, H, W) batches in [0, 1] (valid region, no padding)."""
    channels = reference.shape[1]
    kernel = _gaussian_window(window, sigma, channels, reference)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(reference), blur(estimate)
    var_x = blur(reference * reference) - mu_x**2
    var_y = blur(estimate * estimate) - mu_y**2
    cov = blur(reference * estimate) - mu_x * mu_y
    # scikit-image's sample-covariance correction for the Gaussian window's effective size
    n = window * window
    correction = n / (n - 1)
    var_x, var_y, cov = var_x * correction, var_y * correction, cov * correction
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return score.flatten(1).mean(1)
