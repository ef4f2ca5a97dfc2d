"""FGP TV denoising (Beck and Teboulle 2009), shared by LRC-HSP and TV minimisation."""

import numpy as np
import pytest
import torch
from skimage.restoration import denoise_tv_chambolle

from defense_cli.defenses.tv import denoising_objective, fgp_denoise, operator_l, operator_lt, total_variation


def test_operator_l_is_the_adjoint_of_lt():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    pq = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    pq[0, ..., -1, :] = 0
    pq[1, ..., :, -1] = 0
    assert torch.allclose((operator_lt(x) * pq).sum(), (x * operator_l(pq)).sum())


def test_total_variation_of_a_known_image():
    x = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    # differences at (0,0): vertical 0, horizontal -1; at (0,1): vertical 1; at (1,0): horizontal 0.
    assert total_variation(x, isotropic=True).item() == pytest.approx(2.0)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert total_variation(y, isotropic=True).item() == pytest.approx(2 ** 0.5)
    assert total_variation(y, isotropic=False).item() == pytest.approx(2.0)


@pytest.mark.parametrize("weight, expected", [(0.1, (0.3, 0.8)), (0.5, (0.55, 0.55))])
def test_fgp_two_pixel_known_solution(weight, expected):
    # min (x1 - .2)^2 + (x2 - .9)^2 + 2 w |x1 - x2|: shrink both by w, or meet at the mean.
    b = torch.tensor([[[0.2, 0.9]]], dtype=torch.float64)
    x = fgp_denoise(b, weight, iterations=300)
    assert torch.allclose(x, torch.tensor([[list(expected)]], dtype=torch.float64), atol=1e-6)


def test_fgp_matches_scikit_image_chambolle():
    g = torch.Generator().manual_seed(1)
    b = torch.rand(2, 12, 12, generator=g, dtype=torch.float64) * 0.6 + 0.2
    x = fgp_denoise(b, 0.1, iterations=400)
    reference = np.stack([denoise_tv_chambolle(m.numpy(), weight=0.1, eps=1e-9, max_num_iter=5000) for m in b])
    assert np.abs(x.numpy() - reference).max() < 2e-3


def test_fgp_decreases_the_objective_with_iterations():
    g = torch.Generator().manual_seed(2)
    b = torch.rand(4, 16, 16, generator=g, dtype=torch.float64)
    start = denoising_objective(b, b, 0.2)
    few = denoising_objective(fgp_denoise(b, 0.2, iterations=3), b, 0.2)
    many = denoising_objective(fgp_denoise(b, 0.2, iterations=100), b, 0.2)
    assert (few < start).all() and (many <= few + 1e-9).all()
    assert (total_variation(fgp_denoise(b, 0.2, 100)) < total_variation(b)).all()


def test_fgp_respects_the_box_and_weight_zero_is_the_projection():
    b = torch.tensor([[[-0.5, 0.4], [1.5, 0.7]]])
    assert torch.equal(fgp_denoise(b, 0.0), b.clamp(0, 1))
    x = fgp_denoise(b, 0.05, 50, lower=0.2, upper=0.8)
    assert x.min() >= 0.2 and x.max() <= 0.8


def test_fgp_rejects_a_negative_weight():
    with pytest.raises(ValueError, match="weight"):
        fgp_denoise(torch.zeros(1, 4, 4), -1.0)
