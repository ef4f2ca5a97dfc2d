"""ME-Net (003 section 2): USVT equal to a per-image numpy computation, nuclear norm equal to a
tightly converged solver, recovery of exactly-low-rank matrices, training views and test p."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from completion_fixtures import real_image, relative_error, smooth_low_rank

from defense_cli.defenses.matrix_estimation import nuclear_norm, singular_value_threshold, soft_impute, usvt
from defense_cli.defenses.menet import MENet


def _numpy_usvt(a: np.ndarray, mask: np.ndarray, keep: int) -> np.ndarray:
    """ME-Net's formula, one matrix: SVD of the zero-filled matrix, keep `keep` values, / p_hat."""
    u, sigma, vt = np.linalg.svd(a * mask)
    s = np.zeros((a.shape[0], a.shape[1]))
    s[range(keep), range(keep)] = sigma[:keep]
    return u @ s @ vt / mask.mean()


@pytest.mark.parametrize("channel_mode", ["concat", "separate"])
def test_menet_usvt_equals_per_image_numpy(channel_mode):
    images = real_image(16).expand(3, -1, -1, -1) * torch.tensor([1.0, 0.8, 0.6]).view(3, 1, 1, 1).double()
    defense = MENet(method="usvt", channel_mode=channel_mode)
    mask = defense.sample_mask(images, defense.test_probability, torch.Generator().manual_seed(0))
    ours = defense.estimate(images, mask)
    matrices = (images.permute(0, 2, 1, 3).reshape(3, 1, 16, 48) if channel_mode == "concat" else images) * 2 - 1
    masks = mask.expand(matrices.shape).numpy()
    expected = np.stack([[np.clip(_numpy_usvt(m.numpy(), k, int(0.8 * 16)), -1, 1) for m, k in zip(b, mk)]
                         for b, mk in zip(matrices, masks)])
    expected = torch.from_numpy((expected + 1) / 2)
    if channel_mode == "concat":
        expected = expected.reshape(3, 16, 3, 16).permute(0, 2, 1, 3)
    assert torch.allclose(ours, expected, atol=1e-10)


def test_usvt_is_exact_when_everything_is_observed_and_improves_with_p():
    truth, _ = smooth_low_rank(4)
    assert torch.allclose(usvt(truth, torch.ones_like(truth, dtype=torch.bool), 3), truth, atol=1e-10)
    errors = [relative_error(usvt(truth, smooth_low_rank(4, seed=1, observed_fraction=p)[1], 3), truth).mean()
              for p in (0.5, 0.8, 0.95)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] < 0.8   # USVT is a one-step estimator: measured 0.49-0.71 at p = 0.5


def test_singular_value_threshold_known_answer():
    x = torch.diag(torch.tensor([5.0, 2.0, 0.5], dtype=torch.float64))[None, None]
    assert torch.allclose(singular_value_threshold(x, 1.0)[0, 0], torch.diag(torch.tensor([4.0, 1.0, 0.0]).double()))


def test_nuclear_norm_completes_a_rank_3_matrix_from_half_its_entries():
    truth, observed = smooth_low_rank(4)
    completed = nuclear_norm(truth, observed, weight=1e-2, tolerance=1e-8, max_iterations=5000)
    assert relative_error(completed, truth).max() < 0.01   # measured 0.1-0.7 %


def test_soft_impute_completes_a_rank_3_matrix_from_half_its_entries():
    truth, observed = smooth_low_rank(4)
    completed = soft_impute(truth, observed, shrinkage=1e-2, tolerance=1e-7, max_iterations=3000)
    assert relative_error(completed, truth).max() < 0.03   # measured 0.2-2.6 % (plain soft-impute is slow)
    default = soft_impute(truth, observed)     # fancyimpute's defaults: shrinkage sigma_1 / 50
    assert relative_error(default, truth).max() < 0.12   # measured 4-10 %


def _proximal_reference(a: np.ndarray, mask: np.ndarray, weight: float) -> np.ndarray:
    """Plain (unaccelerated) proximal gradient to 1e-12: argmin weight ||X||_* + ||P(X - A)||^2."""
    x = a * mask
    for _ in range(20000):
        u, s, vt = np.linalg.svd(np.where(mask, a, x), full_matrices=False)
        new = (u * np.maximum(s - weight / 2, 0)) @ vt
        if np.linalg.norm(new - x) < 1e-12:
            return new
        x = new
    return x


def test_nuclear_norm_equals_a_tightly_converged_solver_within_1e_3_rmse():
    image = real_image(16)
    defense = MENet(method="nuclear")
    mask = defense.sample_mask(image, 0.9, torch.Generator().manual_seed(0))
    ours = defense.estimate(image.float(), mask).double()
    a = (image.permute(0, 2, 1, 3).reshape(16, 48) * 2 - 1).numpy()
    reference = np.clip(_proximal_reference(a, mask[0, 0].numpy(), 1.0), -1, 1)
    reference = torch.from_numpy((reference + 1) / 2).reshape(16, 3, 16).permute(1, 0, 2)
    assert (ours[0] - reference).pow(2).mean().sqrt() < 1e-3


def test_training_views_use_n_probabilities_and_test_uses_their_mean():
    defense = MENet(method="usvt", masks=5, p_start=0.6, p_end=1.0)
    assert defense.training_probabilities == pytest.approx([0.6, 0.7, 0.8, 0.9, 1.0])
    assert defense.test_probability == pytest.approx(0.8)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    views = defense.training_views(images, torch.Generator().manual_seed(0))
    assert len(views) == 5 and all(v.shape == images.shape for v in views)
    assert not torch.equal(views[0], views[1])
    full = defense.estimate(images, torch.ones(4, 1, 8, 24, dtype=torch.bool))
    assert torch.allclose(views[-1], full)   # p = 1 observes everything


def test_mask_keeps_each_entry_with_probability_p():
    defense = MENet(method="usvt")
    images = torch.rand(64, 3, 16, 16)
    mask = defense.sample_mask(images, 0.3, torch.Generator().manual_seed(0))
    assert mask.shape == (64, 1, 16, 48)
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.01)
    separate = MENet(method="usvt", channel_mode="separate").sample_mask(images, 0.3, torch.Generator())
    assert separate.shape == (64, 3, 16, 16) and torch.equal(separate[:, 0], separate[:, 2])
