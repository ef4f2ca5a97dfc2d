"""Wavelet denoising by adaptive soft thresholding (`002_fc3b45851f5789b0.txt`, ch. 4, sections 4.7-4.8).

The image goes to YCbCr (4.8 a), each channel through a `db1` discrete wavelet transform (4.8 b),
every detail sub-band is shrunk with the BayesShrink threshold T = sigma^2 / sigma_x (eq. 4.6,
4.7.2) by soft thresholding (4.7.1), then the inverse transform and YCbCr -> RGB (4.8 d, e).
sigma = 0.04 on the [0, 1] pixel scale (Table 4.1). Hard thresholding and the VisuShrink universal
threshold sigma * sqrt(2 log N) are the variants of Table 4.8.

The conventions are those of `skimage.restoration.denoise_wavelet(..., convert2ycbcr=True,
wavelet="db1", rescale_sigma=True)`, which the authors used, so that the two agree to float
precision: sigma is carried to each YCbCr channel as sqrt(sum_j M_ij^2) sigma (M = skimage's
RGB -> YCbCr matrix) and the default number of levels is
max(floor(log2(min(H, W))) - 3, 1) (2 for 32x32, 1 for 28x28). Odd sizes are extended by repeating
the last row / column, which is pywt's `symmetric` mode for a length-2 filter. One difference:
skimage leaves float output unclipped; a defense returns [0, 1], so the result is clamped.
skimage also min-max normalises each YCbCr channel per image and divides sigma by its range; that is
skipped here because it cancels: the detail coefficients ignore the offset, and the BayesShrink and
VisuShrink thresholds and both shrinkages are scale-equivariant (shrink(a d, T(a d, a sigma)) =
a shrink(d, T(d, sigma))), so thresholding the raw YCbCr channel with the raw sigma is the same.

db1 is the Haar wavelet, so the transform here is the orthonormal 2x2 Haar butterfly, batched over
images and channels in torch (CPU or CUDA) instead of a per-image PyWavelets loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from defense_cli.defenses.base import Defense

#: skimage.color.colorconv.ycbcr_from_rgb (RGB in [0, 1] -> Y'CbCr in 16..235 / 16..240, offsets aside)
YCBCR_FROM_RGB = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))
WAVELETS = ("db1", "haar")
METHODS = ("BayesShrink", "VisuShrink")
MODES = ("soft", "hard")


def default_levels(height: int, width: int) -> int:
    """skimage's default: three fewer than pywt's maximum level for db1, at least one."""
    return max(int(math.floor(math.log2(min(height, width)))) - 3, 1)


def haar_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One orthonormal 2-D Haar level of (N, H, W) with H, W even: approximation (N, H/2, W/2),
    details (N, 3, H/2, W/2) (the three sub-bands, each up to the sign of pywt's 'ad', 'da', 'dd').

    Separable: half-sums and half-differences of row pairs, then of column pairs of those.
    Out-of-place torch ops, so autograd differentiates it (the BPDA surrogate)."""
    n, h, w = x.shape
    rows = x.view(n, h // 2, 2, w)
    total = (rows[:, :, 0] + rows[:, :, 1]).view(n, h // 2, w // 2, 2)
    difference = (rows[:, :, 0] - rows[:, :, 1]).view(n, h // 2, w // 2, 2)
    approximation = (total[..., 0] + total[..., 1]) * 0.5
    details = torch.stack((total[..., 0] - total[..., 1], difference[..., 0] + difference[..., 1],
                           difference[..., 0] - difference[..., 1]), dim=1)
    return approximation, details * 0.5


def haar_inverse(approximation: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
    """Inverse of `haar_forward`: (N, h, w) and (N, 3, h, w) -> (N, 2h, 2w)."""
    n, h, w = approximation.shape
    d1, d2, d3 = details.unbind(1)
    total = torch.stack((approximation + d1, approximation - d1), dim=-1).view(n, h, 2 * w)
    difference = torch.stack((d2 + d3, d2 - d3), dim=-1).view(n, h, 2 * w)
    return torch.stack((total + difference, total - difference), dim=2).view(n, 2 * h, 2 * w) * 0.5


def _pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Repeat the last row / column of an odd-sized (N, H, W) batch (pywt 'symmetric' for db1)."""
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    if not (pad_h or pad_w):
        return x
    return F.pad(x.unsqueeze(1), (0, pad_w, 0, pad_h), mode="replicate").squeeze(1)


def _threshold(details: torch.Tensor, sigma: torch.Tensor, method: str, image_size: int) -> torch.Tensor:
    """Per-sub-band thresholds (N, 3, 1, 1); `sigma` is the noise std of each of the N planes."""
    sigma = sigma.view(-1, 1, 1, 1)
    if method == "VisuShrink":
        return (sigma * math.sqrt(2 * math.log(image_size))).expand(-1, 3, 1, 1)
    variance = sigma.square()
    detail_variance = details.square().mean(dim=(2, 3), keepdim=True)
    eps = torch.finfo(details.dtype).eps
    return variance / (detail_variance - variance).clamp(min=eps).sqrt()


def _shrink(details: torch.Tensor, threshold: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "hard":
        return details * (details.abs() >= threshold)
    return details - torch.minimum(torch.maximum(details, -threshold), threshold)


def denoise_planes(planes: torch.Tensor, sigma: torch.Tensor, method: str = "BayesShrink", mode: str = "soft",
                   levels: int | None = None) -> torch.Tensor:
    """Wavelet-threshold each (H, W) plane of `planes` (N, H, W) with its own noise std `sigma` (N,)."""
    height, width = planes.shape[-2:]
    levels = default_levels(height, width) if levels is None else levels
    sizes, details = [], []
    approximation = planes
    for _ in range(levels):
        sizes.append(approximation.shape[-2:])
        approximation, level_details = haar_forward(_pad_to_even(approximation))
        details.append(level_details)
    for size, level_details in zip(reversed(sizes), reversed(details)):
        shrunk = _shrink(level_details, _threshold(level_details, sigma, method, height * width), mode)
        approximation = haar_inverse(approximation, shrunk)[:, : size[0], : size[1]]
    return approximation


def _ycbcr_matrix(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(YCBCR_FROM_RGB, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def _denoise_ycbcr(images: torch.Tensor, sigma: float, method: str, mode: str, levels: int | None) -> torch.Tensor:
    """skimage's convert2ycbcr branch: RGB -> YCbCr, threshold each channel with its own sigma, back."""
    matrix = _ycbcr_matrix(images)
    ycbcr = torch.matmul(matrix, images.flatten(2))
    channel_sigma = (sigma * matrix.square().sum(1).sqrt()).repeat(images.shape[0])
    denoised = denoise_planes(ycbcr.view(-1, *images.shape[-2:]), channel_sigma, method, mode, levels)
    return torch.matmul(torch.linalg.inv(matrix), denoised.reshape(ycbcr.shape)).view_as(images)


def wavelet_denoise(images: torch.Tensor, sigma: float = 0.04, method: str = "BayesShrink", mode: str = "soft",
                    convert2ycbcr: bool = True, levels: int | None = None) -> torch.Tensor:
    """Denoise a (B, C, H, W) batch in [0, 1]; YCbCr applies to 3-channel images only (grey ones are
    thresholded directly, as skimage does for a single channel). Returns the batch clamped to [0, 1]."""
    if convert2ycbcr and images.shape[1] == 3:
        out = _denoise_ycbcr(images, sigma, method, mode, levels)
    else:
        planes = images.flatten(0, 1)
        noise = torch.full((planes.shape[0],), sigma, dtype=images.dtype, device=images.device)
        out = denoise_planes(planes, noise, method, mode, levels).reshape(images.shape)
    return out.clamp(0, 1)


def check_wavelet_parameters(sigma: float, method: str, mode: str, wavelet: str, levels: int | None) -> None:
    """ValueError naming the parameter when a wavelet-denoising setting is outside what is supported."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma={sigma!r} must be a positive number (the paper uses 0.04)")
    if method not in METHODS:
        raise ValueError(f"threshold_method={method!r} must be one of {', '.join(METHODS)}")
    if mode not in MODES:
        raise ValueError(f"threshold_mode={mode!r} must be one of {', '.join(MODES)}")
    if wavelet not in WAVELETS:
        raise ValueError(f"wavelet={wavelet!r} must be one of {', '.join(WAVELETS)} (the Haar wavelet)")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 1):
        raise ValueError(f"levels={levels!r} must be null (skimage's default) or an integer >= 1")


class WaveletDenoising(Defense):
    """Wavelet denoising alone (the WD column of Table 4.7, `002_fc3b45851f5789b0.txt` 4.7-4.8).

    BayesShrink soft thresholding of db1 coefficients in YCbCr with sigma = 0.04 by default;
    `threshold_mode="hard"` and `threshold_method="VisuShrink"` give the variants of Table 4.8.
    Deterministic; `levels=None` follows skimage's default.
    """

    def __init__(self, sigma: float = 0.04, threshold_method: str = "BayesShrink", threshold_mode: str = "soft",
                 convert2ycbcr: bool = True, wavelet: str = "db1", levels: int | None = None) -> None:
        check_wavelet_parameters(sigma, threshold_method, threshold_mode, wavelet, levels)
        self.sigma = float(sigma)
        self.threshold_method = threshold_method
        self.threshold_mode = threshold_mode
        self.convert2ycbcr = bool(convert2ycbcr)
        self.wavelet = wavelet
        self.levels = levels

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return wavelet_denoise(images, self.sigma, self.threshold_method, self.threshold_mode,
                               self.convert2ycbcr, self.levels)

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The denoiser itself (`002_fc3b45851f5789b0.txt` 4.7-4.8: eq. 4.6, shrinkage of 4.7.1):
        every step is a torch op that autograd differentiates, soft (and hard) thresholding almost
        everywhere (the gradient flows through the kept coefficients and through the
        data-dependent BayesShrink threshold). Forward and gradient are exact."""
        return self.transform(images, generator)
