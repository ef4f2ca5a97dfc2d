"""Gram-eigh spectral helpers: equal to the SVD, and a failing decomposition on one image is
repaired or reported with the image index, never silently spread over the batch."""

from __future__ import annotations

import pytest
import torch

from defense_cli.defenses import lowrank_linalg
from defense_cli.defenses.lowrank_linalg import DecompositionError, leading_subspace
from defense_cli.defenses.splic import SPLIC


def _truncated_svd(x: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return u[..., :rank] @ torch.diag_embed(s[..., :rank]) @ vh[..., :rank, :]


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 1, 6, 18), (2, 1, 18, 6)])
def test_leading_subspace_gives_the_truncated_svd(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    subspace = leading_subspace(x, 4)
    assert torch.allclose(subspace.expand(torch.ones_like(subspace.squared)), _truncated_svd(x, 4), atol=1e-10)
    assert torch.allclose(subspace.squared.sqrt(), torch.linalg.svdvals(x)[..., :4], atol=1e-10)


def _eigh_failing_at(index: int, real_eigh):
    """torch.linalg.eigh that returns NaN for matrix `index` of a batched call."""
    def eigh(matrix, *args, **kwargs):
        values, vectors = real_eigh(matrix, *args, **kwargs)
        if matrix.ndim > 2:
            values, vectors = values.clone(), vectors.clone()
            values.view(-1, values.shape[-1])[index] = float("nan")
        return values, vectors
    return eigh


def test_non_finite_eigh_output_on_one_matrix_is_retried(monkeypatch):
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = leading_subspace(x, 3).squared
    monkeypatch.setattr(torch.linalg, "eigh", _eigh_failing_at(7, torch.linalg.eigh))
    repaired = leading_subspace(x, 3).squared
    assert torch.isfinite(repaired).all()
    assert torch.allclose(repaired, expected, rtol=1e-5)


def test_batched_eigh_exception_falls_back_to_each_matrix(monkeypatch):
    real = torch.linalg.eigh

    def eigh(matrix, *args, **kwargs):
        if matrix.ndim > 2:
            raise torch.linalg.LinAlgError("simulated failure to converge")
        return real(matrix, *args, **kwargs)

    x = torch.randn(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = leading_subspace(x, 6).squared
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    assert torch.allclose(leading_subspace(x, 6).squared, expected, atol=1e-5)  # jitter 1e-7 * scale


def test_unrepairable_matrix_names_its_image():
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x[2, 1, 0, 0] = float("inf")
    with pytest.raises(DecompositionError, match="batch index 2"):
        leading_subspace(x, 3)


def test_failure_inside_splic_names_the_image_not_the_channel_matrix(monkeypatch):
    """SPLIC flattens (image, channel) matrices; the error must still name the image (index 1)."""
    real = torch.linalg.eigh

    def eigh(matrix, *args, **kwargs):
        if matrix.ndim > 2 and matrix.shape[0] == 6:   # 2 images x 3 channels, all active
            values, vectors = real(matrix, *args, **kwargs)
            values = values.clone()
            values[4] = float("nan")                     # image 1, channel 1
            return values, vectors
        if matrix.ndim == 2:                             # the per-matrix retry fails too
            raise torch.linalg.LinAlgError("simulated")
        return real(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with pytest.raises(DecompositionError, match="batch index 1"):
        SPLIC(max_iterations=7, channel_mode="separate")(images, torch.Generator().manual_seed(0))


def test_jitter_is_tiny_relative_to_the_matrix():
    assert lowrank_linalg.JITTER <= 1e-6
