"""TV minimisation (Guo et al. 2018; the TVM baseline of 000_1720f31fb7e6036a.txt ch. 3-4)."""

import pytest
import torch

from defense_cli.config import compose_group_option
from defense_cli.defenses import build_defense
from defense_cli.defenses.tv import total_variation
from defense_cli.defenses.tvm import TVMinimization, inpainting_objective, tv_inpaint


def noisy_images(batch: int = 2, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.linspace(0.2, 0.8, size).expand(batch, channels, size, size)
    return (smooth + 0.2 * torch.rand(batch, channels, size, size, generator=g) - 0.1).clamp(0, 1)


def mask(shape, keep_prob: float = 0.5, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < keep_prob


def test_inpainting_reduces_the_tv_norm_and_the_objective():
    x = noisy_images().double()
    keep = mask((2, 1, 16, 16))
    z = tv_inpaint(x, keep, 0.03, 200)
    assert (total_variation(z, isotropic=False) < 0.5 * total_variation(x, isotropic=False)).all()
    assert (inpainting_objective(z, x, keep, 0.03) < inpainting_objective(x, x, keep, 0.03)).all()


def test_inpainting_reaches_the_optimum_of_its_objective():
    x = noisy_images().double()
    keep = mask((2, 1, 16, 16))
    solution = tv_inpaint(x, keep, 0.03, 3000)
    near = inpainting_objective(solution, x, keep, 0.03)
    # No random perturbation of the solution does better (it is a minimiser).
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        other = (solution + 1e-3 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
        assert (inpainting_objective(other, x, keep, 0.03) >= near - 1e-9).all()


def test_inpainting_fits_the_kept_pixels_and_fills_the_dropped_ones():
    x = noisy_images().double()
    keep = mask((2, 1, 16, 16)).expand_as(x)
    z = tv_inpaint(x, keep, 1e-4, 2000)                    # a tiny TV weight: the kept pixels are matched
    assert (z - x)[keep].abs().max() < 1e-2
    z_default = tv_inpaint(x, keep, 0.03, 200)
    assert (z_default - x)[keep].abs().mean() < 0.5 * (z_default - x)[~keep].abs().mean()


def test_a_dropped_pixel_inside_a_constant_region_takes_its_value():
    x = torch.full((1, 1, 8, 8), 0.3)
    x[..., 4, 4] = 0.9
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[..., 4, 4] = False
    assert torch.allclose(tv_inpaint(x, keep, 0.03, 300), torch.full_like(x, 0.3), atol=1e-3)


def test_dropout_mask_share_and_channels():
    d = TVMinimization(keep_prob=0.3)
    x = torch.rand(16, 3, 32, 32)
    keep = d.dropout_mask(x, torch.Generator().manual_seed(0))
    assert keep.shape == (16, 1, 32, 32)
    assert abs(keep.float().mean().item() - 0.3) < 0.02


def test_output_contract_and_determinism_under_a_seed():
    d = TVMinimization(iterations=30)
    x = noisy_images()
    out = d(x, torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, d(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(out, d(x, torch.Generator().manual_seed(8)))
    assert d(x).shape == x.shape                           # no generator: a fresh one
    assert d.randomized and d(x.double(), torch.Generator().manual_seed(7)).dtype == torch.float64


def test_batched_equals_one_image_at_a_time():
    x = noisy_images(3).double()
    keep = mask((3, 1, 16, 16))
    together = tv_inpaint(x, keep, 0.03, 50)
    alone = torch.cat([tv_inpaint(x[i:i + 1], keep[i:i + 1], 0.03, 50) for i in range(3)])
    assert torch.allclose(together, alone)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    x = noisy_images().cuda()
    out = TVMinimization()(x, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == x.device and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("bad, name", [(torch.rand(3, 16, 16), "4-D"), (torch.rand(1, 3, 8, 8) + 1, r"\[0, 1\]"),
                                       (torch.full((1, 3, 8, 8), float("nan")), "NaN")])
def test_bad_images_raise(bad, name):
    with pytest.raises(ValueError, match=name):
        TVMinimization()(bad)


@pytest.mark.parametrize("kwargs, name", [({"keep_prob": 0.0}, "keep_prob"), ({"keep_prob": 1.5}, "keep_prob"),
                                          ({"lambda_tv": 0.0}, "lambda_tv"), ({"iterations": 0}, "iterations")])
def test_bad_parameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TVMinimization(**kwargs)


def test_config_builds_the_reference_defaults():
    d = build_defense(compose_group_option("defense", "tvm"))
    assert isinstance(d, TVMinimization)
    assert (d.keep_prob, d.lambda_tv, d.isotropic) == (0.5, 0.03, False)
