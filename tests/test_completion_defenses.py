"""SPLIC, SRF and ME-Net as defenses: built from their config files, range/shape/dtype/device,
determinism under a seed, and clear errors on bad input or parameters."""

from __future__ import annotations

import pytest
import torch

from defense_cli.config import compose_group_option
from defense_cli.defenses import build_defense
from defense_cli.defenses.menet import MENet
from defense_cli.defenses.splic import SPLIC, SRF

OPTIONS = ["splic", "srf", "menet", "menet_usvt", "menet_softimpute"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _images(device="cpu", batch=3, size=12):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


@pytest.fixture(scope="module", params=OPTIONS)
def defense(request):
    return build_defense(compose_group_option("defense", request.param))


@pytest.mark.parametrize("device", DEVICES)
def test_output_shape_dtype_device_and_range(defense, device):
    images = _images(device)
    out = defense(images, torch.Generator(device=device).manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert defense.randomized


def test_same_seed_same_output_other_seed_other_output(defense):
    images = _images()
    first = defense(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, defense(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, defense(images, torch.Generator().manual_seed(6)))


def test_float64_batches_stay_float64(defense):
    images = _images().double()
    assert defense(images, torch.Generator().manual_seed(0)).dtype == torch.float64


def test_no_generator_draws_fresh_masks(defense):
    images = _images()
    assert defense(images).shape == images.shape


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 12, 12), "4-D"),
    (torch.rand(1, 3, 12, 12) * 2, r"\[0, 1\]"),
    (torch.full((1, 3, 12, 12), float("nan")), "NaN"),
])
def test_bad_images_raise_value_error_naming_them(defense, bad, message):
    with pytest.raises(ValueError, match=message):
        defense(bad)


@pytest.mark.parametrize("build, name", [
    (lambda: MENet(p_start=0.0), "p_start"),
    (lambda: MENet(p_end=1.5), "p_end"),
    (lambda: MENet(p_start=0.9, p_end=0.8), "p_end"),
    (lambda: MENet(method="svd"), "method"),
    (lambda: MENet(masks=0), "masks"),
    (lambda: MENet(channel_mode="rgb"), "channel_mode"),
    (lambda: SPLIC(rank=0), "rank"),
    (lambda: SRF(rank=0), "rank"),
    (lambda: SPLIC(anchor_fraction=1.0), "anchor_fraction"),
    (lambda: SPLIC(shrink=1.2), "shrink"),
    (lambda: SPLIC(tv_weight=-1), "tv_weight"),
    (lambda: SPLIC(tv_gradient="forward"), "tv_gradient"),
    (lambda: SRF(srf_step="big"), "srf_step"),
    (lambda: SPLIC(max_iterations=0), "max_iterations"),
])
def test_bad_parameters_raise_value_error_naming_the_parameter(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_splic_anchors_are_exactly_half_of_the_pixels_shared_by_channels():
    anchors = SPLIC().sample_anchors(_images(batch=4, size=10), torch.Generator().manual_seed(0))
    assert anchors.shape == (4, 1, 10, 10)
    assert (anchors.flatten(1).sum(1) == 50).all()


def test_splic_without_alternation_keeps_the_anchor_pixels():
    images = _images()
    defense = SPLIC(alternate=False)
    anchors = defense.sample_anchors(images, torch.Generator().manual_seed(0))
    out = defense.complete(images, anchors)
    kept = anchors.expand_as(images)
    assert torch.equal(out[kept], images[kept])


@pytest.mark.parametrize("channel_mode", ["separate", "concat"])
def test_splic_channel_modes_both_run(channel_mode):
    out = SPLIC(channel_mode=channel_mode)(_images(), torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 12, 12)


def test_splic_smooths_more_than_srf_on_a_noisy_image():
    """The TV term (lambda = 0.02) is what separates SPLIC from SRF (001 Table 4, Fig. 12)."""
    images = _images()
    tv = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()
    splic = SPLIC()(images, torch.Generator().manual_seed(0))
    srf = SRF()(images, torch.Generator().manual_seed(0))
    assert tv(splic) < tv(srf)
