"""RLKC operators and solvers (000_1720f31fb7e6036a.txt ch. 3, eq. 3.18, 3.22, Algorithms 2 and 3)."""

import pytest
import torch

from defense_cli.defenses.rlkc import (RLKCParams, checked_svd, ialm_rpca, rlkc, singular_value_threshold,
                                       soft_threshold)


def test_non_uniform_soft_threshold_on_known_values():
    values = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    thresholds = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0])
    assert torch.equal(soft_threshold(values, thresholds), torch.tensor([-2.0, 0.0, 0.0, 0.5, 1.0]))


def test_non_uniform_singular_value_threshold_on_a_known_matrix():
    g = torch.Generator().manual_seed(0)
    left, _ = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(4, 3, generator=g, dtype=torch.float64))
    matrix = left @ torch.diag(torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64)) @ right.T
    thresholds = torch.tensor([1.0, 2.0, 4.0, 0.5], dtype=torch.float64)  # one per singular value (4 = min(5, 4))
    result, singular = singular_value_threshold(matrix, thresholds)
    expected = left @ torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)) @ right.T
    assert torch.allclose(result, expected, atol=1e-12)
    assert torch.allclose(singular, torch.tensor([4.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_svd_failure_names_the_batch_index():
    matrices = torch.zeros(2, 3, 4, 4)
    matrices[1, 2, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"\[1, 2\]"):
        checked_svd(matrices)


def low_rank_with_sparse_errors(seed: int, size: int = 32, rank: int = 2, share: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(3, size, rank, generator=g) @ torch.rand(3, rank, size, generator=g) / rank
    corrupted_at = torch.rand(3, size, size, generator=g) < share
    corrupted = torch.where(corrupted_at, torch.rand(3, size, size, generator=g), low)
    return low, corrupted, corrupted_at


def test_ialm_separates_low_rank_and_sparse_parts():
    low, corrupted, corrupted_at = low_rank_with_sparse_errors(0)
    recovered, singular, sparse = ialm_rpca(corrupted)
    assert (recovered - low).norm() / low.norm() < 1e-4
    assert (singular[:, 2:] < 1e-4).all()
    assert torch.allclose(sparse, corrupted - low, atol=1e-4)


def test_rlkc_completes_the_keypoints_of_a_low_rank_matrix():
    # Keypoints (M = 1) are the corrupted entries: RLKC must restore the low-rank values there.
    low, corrupted, keypoints = low_rank_with_sparse_errors(1)
    completed = rlkc(corrupted, keypoints)
    assert (corrupted - low)[keypoints].abs().mean() > 0.1
    assert (completed - low).norm() / low.norm() < 1e-3
    assert (completed - low)[keypoints].abs().max() < 1e-3


def test_rlkc_params_reject_bad_values():
    with pytest.raises(ValueError, match="lam"):
        RLKCParams(lam=0)
    with pytest.raises(ValueError, match="inner_iterations"):
        RLKCParams(inner_iterations=0)
    with pytest.raises(ValueError, match="lower"):
        RLKCParams(lower=1.0, upper=0.0)


def test_the_svd_restores_the_thread_count():
    before = torch.get_num_threads()
    singular_value_threshold(torch.rand(4, 8, 8), 0.1)
    with pytest.raises(FloatingPointError):
        checked_svd(torch.full((1, 4, 4), float("nan")))
    assert torch.get_num_threads() == before
