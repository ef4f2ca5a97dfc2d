"""JPEG compression as a defense (Dziugaite et al. 2016; Das et al. 2017).

It is the baseline of every paper here: `000_1720f31fb7e6036a.txt` ch. 3-4 and
`002_fc3b45851f5789b0.txt` ch. 3-4 (Tables 4.7-4.8 combine it with wavelet denoising and pixel
deflection). The one JPEG codec of the defenses: other defenses call `jpeg_roundtrip`; its
differentiable approximation, for BPDA only, is `differentiable_jpeg`.
"""

from __future__ import annotations

import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from defense_cli.defenses.base import Defense
from defense_cli.defenses.differentiable_jpeg import ROUNDINGS, differentiable_jpeg
from defense_cli.parameter_checks import check_choice


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode each image of a (B, C, H, W) batch in [0, 1] as JPEG at `quality`, then decode it.

    libjpeg does the work in C over the whole list; 1- and 3-channel images are supported.
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality={quality!r} must be an integer in 1..100")
    pixels = images.detach().mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu()
    encoded = encode_jpeg(list(pixels), quality=int(quality))
    mode = ImageReadMode.GRAY if images.shape[1] == 1 else ImageReadMode.RGB
    decoded = torch.stack(decode_jpeg(encoded, mode=mode))
    return decoded.to(device=images.device, dtype=images.dtype).div_(255)


class JPEG(Defense):
    """JPEG compression at a fixed quality (1..100; 75 by default).

    Its BPDA surrogate is the torch JPEG of `differentiable_jpeg` at the same quality, with the
    DCT quantiser's rounding `surrogate_rounding` (`cubic`: Shin and Song 2017; `straight_through`).
    """

    def __init__(self, quality: int = 75, surrogate_rounding: str = "cubic") -> None:
        if not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"quality={quality!r} must be an integer in 1..100")
        self.quality = quality
        self.surrogate_rounding = check_choice("surrogate_rounding", surrogate_rounding, ROUNDINGS)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return jpeg_roundtrip(images, self.quality)

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return differentiable_jpeg(images, self.quality, self.surrogate_rounding)
