"""References for pixel deflection, R-CAM, wavelet denoising and feature squeezing: one image at a time.

Pixel deflection is a per-pixel Python loop (Algorithm 2 as written), wavelet denoising is
`skimage.restoration.denoise_wavelet` per image (what the authors of `002_...` ch. 4 used), R-CAM
is one classifier call per image, bit depth is numpy per image and median smoothing is
`scipy.ndimage.median_filter` per image (what Xu et al. used). They take the configured defense's
parameters (with K and r scaled to the image size as the defense does).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import median_filter
from skimage.restoration import denoise_wavelet

from defense_cli.bench.references import reference
from defense_cli.defenses.pixel_deflection import scaled_parameters
from defense_cli.defenses.rcam import normalise_map

SEED = 0


def deflect_one(image: np.ndarray, deflections: int, window: int, rng: np.random.Generator,
                keep: np.ndarray | None, per_channel: bool) -> np.ndarray:
    """Algorithm 2 on one (C, H, W) array, pixel by pixel."""
    channels, height, width = image.shape
    out = image.copy()
    for i in range(deflections):
        y, x = int(rng.integers(height)), int(rng.integers(width))
        if keep is not None and keep[y, x] >= rng.random():
            continue
        ny = int(rng.integers(max(0, y - window), min(height - 1, y + window) + 1))
        nx = int(rng.integers(max(0, x - window), min(width - 1, x + window) + 1))
        if per_channel:
            out[i % channels, y, x] = image[i % channels, ny, nx]
        else:
            out[:, y, x] = image[:, ny, nx]
    return out


def rcam_one(classifier, image: torch.Tensor, top_k: int) -> np.ndarray:
    """R-CAM (eq. 4.4-4.5) of one image with a single-image forward pass."""
    with torch.no_grad():
        features = classifier.features(image[None])[0].cpu().numpy()
        weights = classifier.head.weight.detach().cpu().numpy()
    logits = weights @ features.mean(axis=(1, 2)) + classifier.head.bias.detach().cpu().numpy()
    classes = np.argsort(-logits)[:top_k]
    combined = sum(np.tensordot(weights[c], features, axes=1) / 2 ** (i + 1) for i, c in enumerate(classes))
    return normalise_map(torch.from_numpy(combined)[None], image.shape[-2:])[0].numpy()


def wavelet_one(image: np.ndarray, defense) -> np.ndarray:
    channels_last = image.transpose(1, 2, 0)
    ycbcr = defense.convert2ycbcr and image.shape[0] == 3
    out = denoise_wavelet(channels_last, sigma=defense.sigma, wavelet=defense.wavelet, mode=defense.threshold_mode,
                          wavelet_levels=defense.levels, convert2ycbcr=ycbcr, method=defense.threshold_method,
                          channel_axis=-1)
    return np.clip(out, 0, 1).transpose(2, 0, 1)


def _per_image(images: torch.Tensor, fn) -> torch.Tensor:
    out = [torch.from_numpy(np.ascontiguousarray(fn(image))) for image in images.cpu()]
    return torch.stack(out).to(device=images.device, dtype=images.dtype)


def _pixel_deflection(images: torch.Tensor, defense) -> torch.Tensor:
    k, r = scaled_parameters(defense.deflections, defense.window, *images.shape[-2:], defense.reference_size)
    rng = np.random.default_rng(SEED)
    classifier = getattr(defense, "_classifier", None) if defense.rcam else None

    def one(image: torch.Tensor) -> np.ndarray:
        keep = None if classifier is None else rcam_one(classifier, image.to(images.device), defense.rcam_top_k)
        out = deflect_one(image.numpy(), k, r, rng, keep, defense.per_channel)
        return wavelet_one(out, defense.denoiser) if defense.denoise else out

    return _per_image(images, one)


for _option in ("pixel_deflection", "pd_wavelet", "pd_only"):
    reference(_option)(_pixel_deflection)


@reference("wavelet")
def wavelet_with_skimage(images: torch.Tensor, defense) -> torch.Tensor:
    return _per_image(images, lambda image: wavelet_one(image.numpy(), defense))


@reference("bit_depth")
def bit_depth_with_numpy(images: torch.Tensor, defense) -> torch.Tensor:
    levels = 2**defense.bits - 1
    return _per_image(images, lambda image: np.rint(image.numpy() * levels) / levels)


@reference("median")
def median_with_scipy(images: torch.Tensor, defense) -> torch.Tensor:
    size = (1, defense.window, defense.window)
    return _per_image(images, lambda image: median_filter(image.numpy(), size=size, mode="reflect"))
