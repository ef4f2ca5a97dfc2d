"""Bit-depth reduction (feature squeezing, Xu et al. 2018): known answers, numpy rint equality,
validation, shape/range/device."""

import numpy as np
import pytest
import torch

from defense_cli.config import compose_group_option
from defense_cli.defenses import build_defense
from defense_cli.defenses.squeezing import BitDepthReduction, reduce_bit_depth

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_one_bit_is_a_threshold_at_one_half():
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 0.8, 1.0]).view(1, 1, 2, 3)
    assert torch.equal(reduce_bit_depth(x, 1).flatten(), torch.tensor([0.0, 0, 0, 1, 1, 1]))


def test_two_bits_give_four_levels():
    x = torch.tensor([0.1, 0.2, 0.5, 0.9]).view(1, 1, 2, 2)
    assert torch.allclose(reduce_bit_depth(x, 2).flatten(), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_matches_xu_et_al_numpy_formula(bits):
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
    expected = np.rint(x.numpy() * (2**bits - 1)) / (2**bits - 1)
    np.testing.assert_array_equal(reduce_bit_depth(x, bits).numpy(), expected)


def test_eight_bits_keep_8_bit_images():
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0)).float() / 255
    assert torch.allclose(reduce_bit_depth(x, 8), x)


@pytest.mark.parametrize("bits", [0, 9, 2.5, True])
def test_bits_outside_1_to_8_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        BitDepthReduction(bits)


@pytest.mark.parametrize("device", DEVICES)
def test_config_shape_range_device(device):
    defense = build_defense(compose_group_option("defense", "bit_depth"))
    assert defense.bits == 5 and not defense.randomized
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    out = defense(images)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.unique(out).numel() <= 32
