"""Wavelet denoising (002 ch. 4, sections 4.7-4.8): the batched torch Haar / BayesShrink matches
skimage.restoration.denoise_wavelet (db1, YCbCr, rescale_sigma, default levels) per image.

Tolerance: 1e-9 in float64 (the same arithmetic) and 2e-5 in float32 (single precision, after the
x255 YCbCr scaling of skimage's matrix).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.restoration import denoise_wavelet

from defense_cli.config import compose_group_option
from defense_cli.defenses import build_defense
from defense_cli.defenses.wavelet import WaveletDenoising, default_levels, haar_forward, haar_inverse, wavelet_denoise

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _natural_like(b, c, h, w, seed, dtype=torch.float64):
    """Smooth random images plus a little noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.avg_pool2d(torch.rand(b, c, h, w, generator=g, dtype=dtype), 5, 1, 2, count_include_pad=False)
    return (smooth + 0.05 * torch.randn(b, c, h, w, generator=g, dtype=dtype)).clamp(0, 1)


def _skimage(images, method="BayesShrink", mode="soft", ycbcr=True, sigma=0.04):
    out = []
    for image in images.double().numpy():
        if image.shape[0] == 1:
            den = denoise_wavelet(image[0], sigma=sigma, wavelet="db1", mode=mode, method=method)[None]
        else:
            den = denoise_wavelet(image.transpose(1, 2, 0), sigma=sigma, wavelet="db1", mode=mode, method=method,
                                  convert2ycbcr=ycbcr, channel_axis=-1).transpose(2, 0, 1)
        out.append(np.clip(den, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize("size", [(32, 32), (28, 28), (31, 29), (64, 48)])
@pytest.mark.parametrize("method, mode", [("BayesShrink", "soft"), ("BayesShrink", "hard"), ("VisuShrink", "soft")])
def test_matches_skimage_in_ycbcr_float64(size, method, mode):
    images = _natural_like(3, 3, *size, seed=sum(size))
    ours = wavelet_denoise(images, 0.04, method, mode, convert2ycbcr=True).numpy()
    np.testing.assert_allclose(ours, _skimage(images, method, mode), atol=1e-9)


def test_matches_skimage_in_float32_and_the_defense_changes_the_image():
    images = _natural_like(4, 3, 32, 32, seed=1, dtype=torch.float32)
    ours = WaveletDenoising()(images)
    np.testing.assert_allclose(ours.numpy(), _skimage(images), atol=2e-5)
    assert (ours - images).abs().max() > 0.01


@pytest.mark.parametrize("channels, ycbcr", [(1, True), (3, False)])
def test_matches_skimage_per_channel_without_ycbcr(channels, ycbcr):
    images = _natural_like(2, channels, 28, 28, seed=2)
    ours = wavelet_denoise(images, 0.04, convert2ycbcr=ycbcr).numpy()
    np.testing.assert_allclose(ours, _skimage(images, ycbcr=ycbcr), atol=1e-9)


def test_haar_is_orthonormal_and_inverts():
    x = torch.randn(5, 8, 6, dtype=torch.float64)
    approximation, details = haar_forward(x)
    assert approximation.shape == (5, 4, 3) and details.shape == (5, 3, 4, 3)
    energy = approximation.square().sum() + details.square().sum()
    assert torch.allclose(energy, x.square().sum())
    assert torch.allclose(haar_inverse(approximation, details), x)
    constant = torch.full((1, 2, 2), 3.0)
    a, d = haar_forward(constant)
    assert torch.allclose(a, torch.full((1, 1, 1), 6.0)) and torch.equal(d, torch.zeros(1, 3, 1, 1))


def test_default_levels_follow_skimage():
    assert default_levels(32, 32) == 2 and default_levels(28, 28) == 1 and default_levels(224, 224) == 4
    assert default_levels(4, 4) == 1


@pytest.mark.parametrize("kwargs, name", [({"sigma": -0.1}, "sigma"), ({"threshold_method": "SUREShrink"},
                                          "threshold_method"), ({"threshold_mode": "x"}, "threshold_mode"),
                                          ({"wavelet": "sym4"}, "wavelet"), ({"levels": 0}, "levels")])
def test_bad_parameters_raise_value_errors_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        WaveletDenoising(**kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_config_shape_range_device_and_determinism(device):
    defense = build_defense(compose_group_option("defense", "wavelet"))
    images = _natural_like(3, 3, 32, 32, seed=3, dtype=torch.float32).to(device)
    out = defense(images)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, defense(images)) and not defense.randomized
