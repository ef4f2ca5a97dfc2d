"""Median smoothing (feature squeezing, Xu et al. 2018): equal to scipy.ndimage.median_filter with
mode 'reflect' (Xu et al.'s call) for every window size, known answers, validation, device."""

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter as scipy_median

from defense_cli.config import compose_group_option
from defense_cli.defenses import build_defense
from defense_cli.defenses.squeezing import MedianSmoothing, median_filter

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 12])
def test_matches_scipy_reflect(window):
    x = torch.rand(3, 3, 9, 7, generator=torch.Generator().manual_seed(window), dtype=torch.float64)
    expected = scipy_median(x.numpy(), size=(1, 1, window, window), mode="reflect")
    np.testing.assert_array_equal(median_filter(x, window).numpy(), expected)


def test_three_by_three_removes_salt_noise_and_keeps_edges():
    x = torch.zeros(1, 1, 6, 6)
    x[..., :, 3:] = 1.0  # a vertical edge
    x[..., 2, 1] = 1.0  # an isolated white pixel
    out = median_filter(x, 3)
    expected = torch.zeros(1, 1, 6, 6)
    expected[..., :, 3:] = 1.0
    assert torch.equal(out, expected)


def test_two_by_two_takes_the_upper_middle_value_of_the_pixel_and_its_upper_left_neighbours():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # window of (1, 1): {1, 2, 3, 4} -> 3; of (0, 0) after reflection: {1, 1, 1, 1} -> 1
    out = median_filter(x, 2)
    assert out[0, 0, 1, 1] == 3 and out[0, 0, 0, 0] == 1


@pytest.mark.parametrize("window", [0, -2, 1.5])
def test_window_below_one_raises(window):
    with pytest.raises(ValueError, match="window"):
        MedianSmoothing(window)


@pytest.mark.parametrize("device", DEVICES)
def test_config_shape_range_device(device):
    defense = build_defense(compose_group_option("defense", "median"))
    assert defense.window == 2
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device)
    out = defense(images)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1
