"""Pixel deflection (002 ch. 4, Algorithm 2): identity at K = 0, copies only from the window,
equals the sequential per-draw loop, R-CAM gating, scaling, validation, device and seeding."""

import pytest
import torch

from defense_cli.config import compose_group_option
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.defenses.pixel_deflection import (PixelDeflection, apply_deflections, deflect_pixels,
                                                   draw_deflections, scaled_parameters)
from defense_cli.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _images(b=3, c=3, h=12, w=10, seed=0, device="cpu"):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed)).to(device)


def _gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def test_zero_deflections_is_the_identity():
    images = _images()
    assert torch.equal(deflect_pixels(images, 0, 3, _gen()), images)
    defense = PixelDeflection(deflections=0, rcam=False, denoise=False)
    assert torch.equal(defense(images, _gen()), images)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("window", [1, 2, 50])
def test_only_values_from_the_window_are_copied(per_channel, window):
    images = _images(b=4, c=3, h=9, w=11, seed=1)
    out = deflect_pixels(images, 40, window, _gen(2), per_channel=per_channel)
    changed = (out != images).nonzero().tolist()
    assert changed, "40 draws should change something"
    for b, c, y, x in changed:
        patch = images[b, c, max(0, y - window): y + window + 1, max(0, x - window): x + window + 1]
        assert (patch == out[b, c, y, x]).any()
    if not per_channel:  # whole pixels move: a changed pixel equals one pixel of its window in all channels
        for b, _, y, x in changed:
            patch = images[b, :, max(0, y - window): y + window + 1, max(0, x - window): x + window + 1]
            assert (patch == out[b, :, y, x, None, None]).all(0).any()


def _sequential(images, target, source, active, per_channel):
    """Algorithm 2 as a plain loop over the same draws: I'[p_i] = I[n_i], in order."""
    out = images.clone()
    b, c, h, w = images.shape
    for n in range(b):
        for i in range(target.shape[1]):
            if not active[n, i]:
                continue
            (ty, tx), (sy, sx) = divmod(int(target[n, i]), w), divmod(int(source[n, i]), w)
            channels = [i % c] if per_channel else list(range(c))
            for ch in channels:
                out[n, ch, ty, tx] = images[n, ch, sy, sx]
    return out


@pytest.mark.parametrize("per_channel", [False, True])
def test_batched_deflection_equals_the_sequential_loop_with_collisions(per_channel):
    images = _images(b=3, c=3, h=4, w=4, seed=3)  # 16 pixels, 30 draws: many pixels drawn twice
    keep = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(4))
    target, source, active = draw_deflections(images, 30, 1, _gen(5), keep)
    assert (~active).any() and active.any()
    assert len(set(target[0].tolist())) < 30
    expected = _sequential(images, target, source, active, per_channel)
    assert torch.equal(apply_deflections(images, target, source, active, per_channel), expected)


def test_neighbours_are_uniform_over_the_clipped_window():
    images = torch.zeros(20000, 1, 5, 5)
    target, source, _ = draw_deflections(images, 1, 1, _gen(6))
    corner = target[:, 0] == 0  # pixel (0, 0): window ∩ image = {(0,0), (0,1), (1,0), (1,1)}
    counts = torch.bincount(source[corner, 0], minlength=25).float()
    assert set(counts.nonzero().flatten().tolist()) == {0, 1, 5, 6}
    shares = counts[[0, 1, 5, 6]] / counts.sum()
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.05)


def test_rcam_probability_one_keeps_every_pixel_and_zero_keeps_none():
    images = _images(seed=7)
    b, _, h, w = images.shape
    assert torch.equal(deflect_pixels(images, 50, 2, _gen(), torch.ones(b, h, w)), images)
    _, _, active = draw_deflections(images, 50, 2, _gen(), torch.zeros(b, h, w))
    assert active.all()


def test_rcam_map_steers_deflections_away_from_the_object():
    images = torch.zeros(200, 1, 8, 8)
    keep = torch.zeros(200, 8, 8)
    keep[:, :4] = 0.9  # object in the top half
    target, _, active = draw_deflections(images, 20, 1, _gen(8), keep)
    top = target < 32
    top_rate = active[top].float().mean()
    bottom_rate = active[~top].float().mean()
    assert bottom_rate == 1
    assert abs(top_rate - 0.1) < 0.03


def test_scaled_parameters_keep_the_share_of_pixels_and_the_relative_window():
    assert scaled_parameters(100, 10, 224, 224, 224) == (100, 10)
    assert scaled_parameters(100, 10, 32, 32, 224) == (2, 1)
    assert scaled_parameters(100, 10, 28, 28, 224) == (2, 1)
    assert scaled_parameters(1000, 50, 32, 32, 224) == (20, 7)
    assert scaled_parameters(10, 10, 32, 32, 224) == (1, 1)  # at least one draw when K > 0
    assert scaled_parameters(0, 10, 32, 32, 224) == (0, 1)
    assert scaled_parameters(100, 10, 32, 32, None) == (100, 10)


@pytest.mark.parametrize("kwargs, name", [
    ({"deflections": -1}, "deflections"), ({"window": 0}, "window"), ({"deflections": 2.5}, "deflections"),
    ({"reference_size": 0}, "reference_size"), ({"rcam_top_k": 0}, "rcam_top_k"), ({"votes": 0}, "votes"),
    ({"sigma": 0}, "sigma"), ({"threshold_method": "SURE"}, "threshold_method"),
    ({"threshold_mode": "garrote"}, "threshold_mode"), ({"wavelet": "db2"}, "wavelet"),
    ({"levels": 0}, "levels"), ({"jpeg_quality": 101}, "jpeg_quality"),
])
def test_bad_parameters_raise_value_errors_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PixelDeflection(**kwargs)


def test_bad_config_value_is_a_config_error():
    cfg = compose_group_option("defense", "pd_wavelet")
    cfg.window = 0
    with pytest.raises(ConfigError, match="window"):
        build_defense(cfg)


def test_rcam_without_a_classifier_is_refused():
    defense = build_defense(compose_group_option("defense", "pixel_deflection"))
    assert defense.needs_classifier
    with pytest.raises(ValueError, match="classifier"):
        defense.prepare(DefenseContext())
    with pytest.raises(ValueError, match="rcam"):
        defense(_images(), _gen())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("option", ["pd_only", "pd_wavelet"])
def test_shape_range_dtype_device_and_seed(option, device):
    defense = build_defense(compose_group_option("defense", option))
    defense.reference_size = None  # full K = 100, r = 10 on these small images
    images = _images(b=5, h=32, w=32, seed=9, device=device)
    out = defense(images, _gen(1, device))
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, defense(images, _gen(1, device)))
    assert not torch.equal(out, defense(images, _gen(2, device)))
    assert defense.randomized and not defense.needs_classifier


def test_jpeg_after_denoising_uses_the_jpeg_roundtrip():
    from defense_cli.defenses.jpeg import jpeg_roundtrip

    images = _images(b=2, h=16, w=16, seed=10)
    defense = PixelDeflection(deflections=0, rcam=False, denoise=False, jpeg_quality=50)
    assert torch.equal(defense(images, _gen()), jpeg_roundtrip(images, 50))
