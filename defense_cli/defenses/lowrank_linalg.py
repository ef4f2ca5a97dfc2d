"""Batched spectral building blocks of the matrix-completion defenses (ME-Net, SRF, SPLIC).

Everything works on stacks of matrices shaped (B, K, m, n): B images, K matrices per image (one
per channel, or one for the channels side by side). The singular vectors of the short side come
from `torch.linalg.eigh` of the small Gram matrix (m x m when m <= n), which is about twice as
fast as `torch.linalg.svd` on these sizes and exact for the operations used here (projections on
the leading singular subspace and singular-value reweighting, where a weight w(sigma) multiplies
U^T X, so no division by a small singular value ever happens).

A numerical failure on one matrix must not silently spoil the batch: `leading_eigh` checks every
decomposition, retries a failing matrix alone in float64 with a tiny diagonal jitter, and raises
`DecompositionError` naming the image index when that fails too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defense_cli.defenses.cpu_threads import map_over_threads

#: Relative size of the diagonal jitter added to a Gram matrix whose decomposition failed.
JITTER = 1e-7
#: Eigenvalue pairs closer than this share of the largest one count as repeated in `GuardedEigh`.
EIGENVALUE_GAP = 1e-9


class DecompositionError(RuntimeError):
    """An eigen/singular value decomposition failed for one image even after the fallback."""

    def __init__(self, image_index: int, detail: str) -> None:
        super().__init__(f"matrix decomposition failed for image at batch index {image_index}: {detail}")
        self.image_index = image_index


def gram(matrices: torch.Tensor) -> torch.Tensor:
    """X X^T when m <= n, else X^T X: the Gram matrix of the short side, (B, K, l, l)."""
    if matrices.shape[-2] <= matrices.shape[-1]:
        return matrices @ matrices.mT
    return matrices.mT @ matrices


class GuardedEigh(torch.autograd.Function):
    """torch.linalg.eigh whose backward skips the pairs of (nearly) equal eigenvalues.

    The eigenvector part of the derivative (Giles 2008, "An extended collection of matrix
    derivative results", section 3.1) is V (F o skew(V^T dV) + diag(dL)) V^T with F_ij = 1 / (l_j - l_i);
    it is infinite for a repeated eigenvalue (the zero eigenvalues of a rank-deficient image's
    Gram matrix, common on MNIST), where the eigenvectors are not even defined. Those pairs get
    F_ij = 0 (a rotation inside the eigenspace changes nothing the completion uses), the others
    the exact derivative, the same as torch's.
    """

    @staticmethod
    def forward(ctx, symmetric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, vectors = torch.linalg.eigh(symmetric)
        ctx.save_for_backward(values, vectors)
        return values, vectors

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor | None, grad_vectors: torch.Tensor | None) -> torch.Tensor:
        values, vectors = ctx.saved_tensors
        inner = torch.zeros_like(vectors)
        if grad_vectors is not None:
            gaps = values.unsqueeze(-2) - values.unsqueeze(-1)                     # l_j - l_i
            floor = EIGENVALUE_GAP * values.abs().amax(-1, keepdim=True).unsqueeze(-1)
            inverse = torch.where(gaps.abs() > floor, 1 / torch.where(gaps == 0, 1.0, gaps), 0.0)
            projected = vectors.mT @ grad_vectors
            inner = (projected - projected.mT) / 2 * inverse
        if grad_values is not None:
            inner = inner + torch.diag_embed(grad_values)
        return vectors @ inner @ vectors.mT


def batched_eigh(symmetric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.eigh of a stack of symmetric matrices, split over threads (`map_over_threads`).

    Under autograd (a BPDA surrogate) it is one `GuardedEigh` call, differentiable everywhere."""
    if symmetric.requires_grad and torch.is_grad_enabled():
        return GuardedEigh.apply(symmetric)
    flat = symmetric.reshape(-1, *symmetric.shape[-2:])
    parts = map_over_threads(torch.linalg.eigh, flat)
    values = torch.cat([part[0] for part in parts]).reshape(symmetric.shape[:-1])
    vectors = torch.cat([part[1] for part in parts]).reshape(symmetric.shape)
    return values, vectors


def _decompose_one(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """eigh of one symmetric matrix in float64 with a tiny jitter; None when it still fails."""
    work = matrix.double()
    scale = work.diagonal().abs().mean().clamp_min(1e-30)
    work = work + JITTER * scale * torch.eye(work.shape[-1], dtype=work.dtype, device=work.device)
    try:
        values, vectors = torch.linalg.eigh(work)
    except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
        return None
    if not (torch.isfinite(values).all() and torch.isfinite(vectors).all()):
        return None
    return values.to(matrix.dtype), vectors.to(matrix.dtype)


def _eigh_checked(symmetric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched eigh whose failures (exception or non-finite output) are retried per matrix."""
    try:
        values, vectors = batched_eigh(symmetric)
        # a sum is non-finite when any term is: one cheap reduction instead of a boolean tensor
        failed = ~torch.isfinite(values.sum(-1) + vectors.sum((-2, -1)))
    except RuntimeError:
        values = torch.zeros(symmetric.shape[:-1], dtype=symmetric.dtype, device=symmetric.device)
        vectors = torch.zeros_like(symmetric)
        failed = torch.ones(symmetric.shape[:-2], dtype=torch.bool, device=symmetric.device)
    if failed.any():
        for index in failed.nonzero().tolist():
            retry = _decompose_one(symmetric[tuple(index)])
            if retry is None:
                raise DecompositionError(index[0], "eigh failed again in float64 with a diagonal jitter "
                                         "(non-finite values in the matrix?)")
            values[tuple(index)], vectors[tuple(index)] = retry
    return values, vectors


def leading_eigh(symmetric: torch.Tensor, count: int,
                 owners: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` largest eigenvalues (descending, clamped at 0) and their eigenvectors.

    `symmetric` is a (B, K, l, l) stack of positive semi-definite matrices; returns (B, K, count)
    and (B, K, l, count). Raises DecompositionError naming the image index (`owners[b]` when the
    stack's first axis is not the image axis) on a failure the float64 + jitter retry cannot repair.
    """
    try:
        values, vectors = _eigh_checked(symmetric)
    except DecompositionError as err:
        if owners is None:
            raise
        raise DecompositionError(int(owners[err.image_index]), str(err)) from err
    values = values[..., -count:].flip(-1).clamp_min(0)
    vectors = vectors[..., -count:].flip(-1)
    return values, vectors


@dataclass(frozen=True)
class LeadingSubspace:
    """The `count` leading singular values and short-side singular vectors of a matrix stack."""

    squared: torch.Tensor       # (B, K, count) squared singular values, descending
    vectors: torch.Tensor       # (B, K, l, count) left (wide) or right (tall) singular vectors
    coordinates: torch.Tensor   # U^T X (wide) or X V (tall)
    wide: bool

    def expand(self, weights: torch.Tensor) -> torch.Tensor:
        """sum_k w_k sigma_k u_k v_k^T for weights (B, K, count): w = 1 gives the rank-count part."""
        scaled = self.vectors * weights.unsqueeze(-2)
        return scaled @ self.coordinates if self.wide else self.coordinates @ scaled.mT


def leading_subspace(matrices: torch.Tensor, count: int, owners: torch.Tensor | None = None) -> LeadingSubspace:
    """Leading `count` singular pairs of each (m, n) matrix of a (B, K, m, n) stack, via eigh of the Gram."""
    squared, vectors = leading_eigh(gram(matrices), count, owners)
    wide = matrices.shape[-2] <= matrices.shape[-1]
    coordinates = vectors.mT @ matrices if wide else matrices @ vectors
    return LeadingSubspace(squared, vectors, coordinates, wide)


def largest_singular_value(matrices: torch.Tensor, owners: torch.Tensor | None = None) -> torch.Tensor:
    """sigma_1 of each matrix, (B, K)."""
    squared, _ = leading_eigh(gram(matrices), 1, owners)
    return squared[..., 0].sqrt()
