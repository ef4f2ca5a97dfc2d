"""A differentiable JPEG round trip in torch: the BPDA surrogate of `jpeg.jpeg_roundtrip`.

The baseline JPEG codec (ITU-T T.81) as libjpeg runs it with `jpeg_set_defaults` (what
torchvision's `encode_jpeg` / `decode_jpeg` use): pixels rounded to 0..255, JFIF RGB -> YCbCr
(T.81 / JFIF 1.02), 4:2:0 chroma subsampling by 2 x 2 means, each plane padded to a multiple of 8
by repeating its last row / column, level shift by 128, the orthonormal 8 x 8 DCT (T.81 A.3.3),
quantisation by the Annex K tables scaled to the quality by the IJG rule (50 / q below 50, 2 - q / 50
above), then the inverse steps, with libjpeg's "fancy" triangle-filter upsampling of the chroma
(weights 3/4, 1/4 per axis) and YCbCr -> RGB. Grey images are one plane, without colour steps.

Rounding the DCT coefficients has no useful derivative; two approximations (`rounding`):
- `straight_through`: the forward rounds, the backward is the identity;
- `cubic`: round(x) + (x - round(x))^3 in the forward and backward (Shin and Song 2017,
  "JPEG-resistant adversarial images", NIPS workshop on machine learning and computer security,
  section 3: the cubic makes the quantiser's derivative 3 (x - round(x))^2, near 0 for coefficients
  close to a quantisation level, as the real quantiser's sensitivity).
Pixel roundings (to 0..255 before encoding, after decoding) are straight-through in both modes.

The forward is not libjpeg's bit for bit (libjpeg uses integer DCTs and fixed-point colour
conversion): docs/attacks.md gives the measured difference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROUNDINGS = ("straight_through", "cubic")

#: T.81 Annex K, Table K.1 (luminance) and K.2 (chrominance), quality 50.
LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99))
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99), (47, 66, 99, 99, 99, 99, 99, 99)) + ((99,) * 8,) * 4
#: JFIF RGB -> YCbCr (offsets 0, 128, 128) and its inverse.
YCBCR_FROM_RGB = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
RGB_FROM_YCBCR = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
BLOCK = 8
#: Integer pixels make DC / Q a multiple of 1/128 (ties at one half are common); see `round_half_away`.
TIE_SLACK = 1e-6


def quantisation_table(base: tuple[tuple[int, ...], ...], quality: int, like: torch.Tensor) -> torch.Tensor:
    """libjpeg's `jpeg_quality_scaling` + `jpeg_add_quant_table` (baseline: entries clamped to 1..255)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, dtype=torch.int64).mul(scale).add(50).div(100, rounding_mode="floor").clamp(1, 255)
    return table.to(device=like.device, dtype=like.dtype)


def dct_matrix(like: torch.Tensor) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix D (D x is the transform of x); T.81's FDCT is D B D^T."""
    k = torch.arange(BLOCK, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(BLOCK, dtype=torch.float64).unsqueeze(0)
    matrix = torch.cos(math.pi * (2 * n + 1) * k / (2 * BLOCK)) * math.sqrt(2 / BLOCK)
    matrix[0] /= math.sqrt(2)
    return matrix.to(device=like.device, dtype=like.dtype)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Nearest integer, ties away from zero (libjpeg's quantiser); a relative slack of TIE_SLACK
    catches the ties that float rounding of the DCT puts just below one half."""
    return torch.sign(x) * torch.floor(x.abs() * (1 + TIE_SLACK) + 0.5)


def straight_through_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward (ties away from zero), identity backward."""
    return x + (round_half_away(x) - x).detach()


def cubic_round(x: torch.Tensor) -> torch.Tensor:
    """Shin and Song's approximation round(x) + (x - round(x))^3."""
    nearest = round_half_away(x).detach()
    return nearest + (x - nearest) ** 3


def _pad_replicate(planes: torch.Tensor, multiple: int) -> torch.Tensor:
    """(N, H, W) padded at the bottom / right by repeating the last row / column to multiples."""
    pad_h, pad_w = (-planes.shape[-2]) % multiple, (-planes.shape[-1]) % multiple
    if not (pad_h or pad_w):
        return planes
    return F.pad(planes.unsqueeze(1), (0, pad_w, 0, pad_h), mode="replicate").squeeze(1)


def code_planes(planes: torch.Tensor, table: torch.Tensor, rounding: str) -> torch.Tensor:
    """Encode and decode (N, H, W) sample planes in 0..255 with one quantisation table."""
    n, height, width = planes.shape
    padded = _pad_replicate(planes, BLOCK) - 128
    h, w = padded.shape[-2] // BLOCK, padded.shape[-1] // BLOCK
    blocks = padded.view(n, h, BLOCK, w, BLOCK).transpose(2, 3)             # (N, h, w, 8, 8)
    dct = dct_matrix(planes)
    coefficients = dct @ blocks @ dct.mT
    quantise = cubic_round if rounding == "cubic" else straight_through_round
    decoded = dct.mT @ (quantise(coefficients / table) * table) @ dct
    samples = decoded.transpose(2, 3).reshape(n, h * BLOCK, w * BLOCK)[:, :height, :width] + 128
    return straight_through_round(samples).clamp(0, 255)


def fancy_upsample(planes: torch.Tensor) -> torch.Tensor:
    """libjpeg's h2v2 fancy upsampling of (N, h, w) to (N, 2h, 2w): along each axis, each output
    sample is 3/4 of the nearest input sample and 1/4 of the next nearest (edges repeated)."""
    n, h, w = planes.shape
    padded = F.pad(planes.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    centre = padded[:, 1:-1]
    rows = torch.stack((0.75 * centre + 0.25 * padded[:, :-2], 0.75 * centre + 0.25 * padded[:, 2:]), dim=2)
    rows = rows.reshape(n, 2 * h, w + 2)
    centre = rows[..., 1:-1]
    columns = torch.stack((0.75 * centre + 0.25 * rows[..., :-2], 0.75 * centre + 0.25 * rows[..., 2:]), dim=-1)
    return columns.reshape(n, 2 * h, 2 * w)


def _colour_matrix(values: tuple[tuple[float, ...], ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def _code_colour(pixels: torch.Tensor, quality: int, rounding: str) -> torch.Tensor:
    """(B, 3, H, W) in 0..255 through YCbCr 4:2:0 JPEG and back."""
    b, _, height, width = pixels.shape
    offset = pixels.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1)
    ycbcr = torch.einsum("ij,bjhw->bihw", _colour_matrix(YCBCR_FROM_RGB, pixels), pixels) + offset
    ycbcr = straight_through_round(ycbcr).clamp(0, 255)
    luma = code_planes(ycbcr[:, 0], quantisation_table(LUMINANCE_TABLE, quality, pixels), rounding)
    chroma = _pad_replicate(ycbcr[:, 1:].flatten(0, 1), 2)
    chroma = F.avg_pool2d(chroma.unsqueeze(1), 2).squeeze(1)
    chroma = code_planes(chroma, quantisation_table(CHROMINANCE_TABLE, quality, pixels), rounding)
    chroma = fancy_upsample(chroma)[:, :height, :width].reshape(b, 2, height, width)
    decoded = torch.cat((luma.unsqueeze(1), chroma), dim=1) - offset
    return torch.einsum("ij,bjhw->bihw", _colour_matrix(RGB_FROM_YCBCR, pixels), decoded)


def differentiable_jpeg(images: torch.Tensor, quality: int, rounding: str = "cubic") -> torch.Tensor:
    """JPEG round trip of a (B, C, H, W) batch in [0, 1] (C = 1 or 3) at `quality`, differentiable."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is not allowed; use one of {', '.join(ROUNDINGS)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"JPEG codes 1- or 3-channel images, got {images.shape[1]} channels")
    pixels = straight_through_round(images * 255).clamp(0, 255)
    if images.shape[1] == 3:
        decoded = _code_colour(pixels, quality, rounding)
    else:
        table = quantisation_table(LUMINANCE_TABLE, quality, pixels)
        decoded = code_planes(pixels[:, 0], table, rounding).unsqueeze(1)
    return straight_through_round(decoded).clamp(0, 255) / 255
