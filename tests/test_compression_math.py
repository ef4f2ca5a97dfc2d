"""Known answers for the low-rank solvers and decomposed layers (000_... ch. 2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defense_cli.compression.cost import conv_macs, count_flops, lowrank_macs
from defense_cli.compression.layers import LowRankConv, SeparableConv, fold_batchnorm, weight_svd_map
from defense_cli.compression.solvers import l1_lrar, l2_lowrank, nl2a, soft_threshold


def _outlier_problem(seed: int = 0, n: int = 12, points: int = 2000, m: int = 4):
    g = torch.Generator().manual_seed(seed)
    M0 = torch.randn(n, m, generator=g) @ torch.randn(m, n, generator=g)
    H = torch.randn(n, points, generator=g)
    clean = M0 @ H + 0.5
    mask = torch.rand(n, points, generator=g) < 0.05
    outliers = torch.zeros(n, points)
    outliers[mask] = 20 * torch.randn(int(mask.sum()), generator=g)
    return clean, clean + outliers, H, m


def test_soft_threshold_known_values():
    q = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0])
    assert torch.allclose(soft_threshold(q, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0]))


def test_admm_residual_decreases_and_l1_beats_l2_on_sparse_outliers():
    clean, noisy, H, m = _outlier_problem()
    l1 = l1_lrar(noisy, H, m, tol=1e-6)
    l2 = l2_lowrank(noisy, H, m)
    assert l1.residuals[-1] < 1e-6 < l1.residuals[0]
    assert all(b <= a * 1.5 for a, b in zip(l1.residuals[5:], l1.residuals[6:]))  # no blow-up on the way down
    error = lambda fit: float(torch.linalg.norm(clean - fit.apply(H)) / torch.linalg.norm(clean))
    assert error(l1) < 0.5 * error(l2)
    assert l1.rank == m and torch.linalg.matrix_rank(l1.P @ l1.Qt) == m


@pytest.mark.parametrize("solver", [l1_lrar, l2_lowrank, nl2a])
def test_responses_in_a_subspace_are_recovered_exactly(solver):
    clean, _, H, m = _outlier_problem(seed=1)
    fit = solver(clean, H, m)
    assert torch.linalg.norm(clean - fit.apply(H)) / torch.linalg.norm(clean) < 1e-4


def test_too_few_points_for_the_rank_is_an_error_naming_the_count():
    Y = torch.randn(16, 10)
    with pytest.raises(ValueError, match="10 sampled response points"):
        l1_lrar(Y, Y, 4)
    with pytest.raises(ValueError, match="rank=17"):
        l2_lowrank(torch.randn(16, 100), torch.randn(16, 100), 17)


@pytest.mark.parametrize("stride,size", [(1, 9), (2, 10)])
def test_lowrank_conv_flops_equal_eq_2_7(stride, size):
    conv = nn.Conv2d(6, 16, 3, stride=stride, padding=1)
    layer = LowRankConv.from_map(conv, weight_svd_map(conv, 5))
    out = (size - 1) // stride + 1
    assert count_flops(conv, (1, 6, size, size)) == 2 * conv_macs(16, 6, 3, 3, out, out)
    assert count_flops(layer, (1, 6, size, size)) == 2 * lowrank_macs(16, 5, 6, 3, 3, out, out)


def test_lowrank_conv_at_full_rank_reproduces_the_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    layer = LowRankConv.from_map(conv, weight_svd_map(conv, 8))
    x = torch.randn(2, 4, 7, 7)
    assert torch.allclose(layer(x), conv(x), atol=1e-5)


def test_vh2_reproduces_a_separable_kernel_exactly():
    g = torch.Generator().manual_seed(0)
    n, c, k, K = 8, 3, 5, 2
    vertical = torch.randn(K, c, k, generator=g)
    horizontal = torch.randn(n, K, k, generator=g)
    conv = nn.Conv2d(c, n, k, padding=2, stride=2)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("jcy,njx->ncyx", vertical, horizontal))
    layer = SeparableConv.from_conv(conv, K)
    x = torch.randn(2, c, 11, 11, generator=g)
    assert layer(x).shape == conv(x).shape
    assert torch.allclose(layer(x), conv(x), atol=1e-4)
    assert not torch.allclose(SeparableConv.from_conv(conv, 1)(x), conv(x), atol=1e-2)


def test_fold_batchnorm_matches_conv_then_batchnorm():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(fold_batchnorm(conv, bn)(x), bn(conv(x)), atol=1e-5)
