"""The JPEG defense: one implementation, batched, equal to PIL per image."""

from __future__ import annotations

import pytest
import torch

from defense_cli.bench.references.jpeg import jpeg_with_pil
from defense_cli.defenses.jpeg import JPEG


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_matches_pil_and_keeps_shape_range_dtype(channels):
    images = torch.rand(4, channels, 32, 32, generator=torch.Generator().manual_seed(0))
    defense = JPEG(quality=50)
    out = defense(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert 0 <= out.min() and out.max() <= 1
    assert (out - images).abs().max() > 0.01          # it does change the image
    assert (out - jpeg_with_pil(images, defense)).abs().max() <= 2 / 255


def test_lower_quality_loses_more():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    error = [(JPEG(q)(images) - images).pow(2).mean() for q in (95, 10)]
    assert error[1] > error[0]


@pytest.mark.parametrize("quality", [0, 101, 50.5])
def test_quality_outside_1_to_100_is_refused(quality):
    with pytest.raises(ValueError, match="quality"):
        JPEG(quality)


@pytest.mark.parametrize(
    ("images", "message"),
    [(torch.rand(3, 8, 8), "4-D"), (torch.full((1, 1, 8, 8), 1.5), r"\[0, 1\]"),
     (torch.full((1, 1, 8, 8), float("nan")), "NaN")],
)
def test_bad_images_are_refused(images, message):
    with pytest.raises(ValueError, match=message):
        JPEG(75)(images)
