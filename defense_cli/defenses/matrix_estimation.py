"""Matrix estimation from masked observations, batched: USVT, Soft-Impute and nuclear-norm minimisation.

The three ME methods of ME-Net (`003_b8a380e28ee315f5.txt` section 2.2, eq. 1-2, section 3.5),
each on a (B, K, m, n) stack of matrices with a boolean observation mask of the same shape;
unobserved entries of `observed` are ignored. Spectral steps use the Gram-matrix eigh of
`lowrank_linalg` (B = image axis, for the error message of a failed decomposition).

- `usvt` (Chatterjee 2015, as in ME-Net's code): keep the `keep` leading singular values of the
  zero-filled matrix and divide by the observed fraction p_hat.
- `soft_impute` (Mazumder, Hastie, Tibshirani 2010, with the defaults of `fancyimpute.SoftImpute`
  used by ME-Net's code): shrinkage sigma_1 / 50, fill the missing entries with the
  singular-value-thresholded estimate until their relative change is below 0.001 (100 iterations
  at most); observed entries are returned as observed.
- `nuclear_norm`: eq. 1 in the penalised form that ME-Net's code hands to a convex solver (SCS):
  min_X  mu ||X||_* + ||P_Omega(X - A)||_F^2, solved here by accelerated proximal gradient
  (FISTA, Beck & Teboulle 2009) on (1/2)||P_Omega(X - A)||^2 + (mu/2)||X||_*: the gradient is
  1-Lipschitz, so step 1 and the proximal map is singular value thresholding at mu/2.
"""

from __future__ import annotations

import torch

from defense_cli.defenses.lowrank_linalg import largest_singular_value, leading_subspace


def singular_value_threshold(matrices: torch.Tensor, threshold: torch.Tensor | float,
                             owners: torch.Tensor | None = None) -> torch.Tensor:
    """U diag(max(sigma - t, 0)) V^T per matrix; `threshold` is a float or (B, K)."""
    subspace = leading_subspace(matrices, min(matrices.shape[-2:]), owners)
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.unsqueeze(-1)
    sigma = subspace.squared.clamp_min(torch.finfo(subspace.squared.dtype).tiny).sqrt()  # finite gradient at 0
    weights = torch.where(sigma > threshold, 1 - threshold / sigma.clamp_min(torch.finfo(sigma.dtype).tiny), 0.0)
    return subspace.expand(weights)


def observed_fraction(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """p_hat per matrix (B, K), at least one entry's worth so that an empty mask cannot divide by 0."""
    m, n = mask.shape[-2:]
    return mask.flatten(-2).sum(-1).clamp_min(1).to(dtype) / (m * n)


def usvt(observed: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Universal singular value thresholding as in ME-Net's code: rank-`keep` part of P(A), / p_hat."""
    filled = torch.where(mask, observed, torch.zeros_like(observed))
    keep = min(keep, *observed.shape[-2:])
    if keep == 0:
        return torch.zeros_like(observed)
    subspace = leading_subspace(filled, keep)
    estimate = subspace.expand(torch.ones_like(subspace.squared))
    return estimate / observed_fraction(mask, observed.dtype)[..., None, None]


def _relative_change(old: torch.Tensor, new: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """||old - new|| / ||old|| over the entries `where`, per matrix; +inf when ||old|| = 0."""
    zero = torch.zeros_like(old)
    diff = torch.where(where, old - new, zero).flatten(-2).norm(dim=-1)
    base = torch.where(where, old, zero).flatten(-2).norm(dim=-1)
    return torch.where(base > 0, diff / base.clamp_min(torch.finfo(old.dtype).tiny), torch.full_like(base, float("inf")))


def soft_impute_threshold(filled: torch.Tensor, shrinkage: float | None) -> torch.Tensor:
    """Soft-Impute's shrinkage per matrix (B, K): `shrinkage`, or sigma_1 of the zero-filled matrix / 50."""
    if shrinkage is None:
        return largest_singular_value(filled) / 50
    return torch.full(filled.shape[:-2], shrinkage, dtype=filled.dtype, device=filled.device)


def soft_impute(observed: torch.Tensor, mask: torch.Tensor, shrinkage: float | None = None,
                tolerance: float = 1e-3, max_iterations: int = 100) -> torch.Tensor:
    """Soft-Impute (fancyimpute semantics, see module docstring), each matrix stopping on its own."""
    filled = torch.where(mask, observed, torch.zeros_like(observed))
    threshold = soft_impute_threshold(filled, shrinkage)
    active = torch.ones(filled.shape[:-2], dtype=torch.bool, device=filled.device)
    for _ in range(max_iterations):
        index = active.nonzero(as_tuple=True)
        current, missing = filled[index].unsqueeze(1), ~mask[index].unsqueeze(1)
        estimate = singular_value_threshold(current, threshold[index].unsqueeze(1), index[0])
        converged = _relative_change(current, estimate, missing).squeeze(1) < tolerance
        filled[index] = torch.where(missing, estimate, current).squeeze(1)
        active[index] = ~converged
        if not active.any():
            break
    return filled


def nuclear_norm(observed: torch.Tensor, mask: torch.Tensor, weight: float = 1.0, tolerance: float = 1e-4,
                 max_iterations: int = 500) -> torch.Tensor:
    """argmin_X weight ||X||_* + ||P(X - A)||_F^2 by FISTA; stops per matrix when the relative
    change ||X_k+1 - X_k||_F / max(||X_k||_F, 1) is below `tolerance`."""
    target = torch.where(mask, observed, torch.zeros_like(observed))
    unobserved = (~mask).to(observed.dtype)
    estimate = target.clone()
    momentum = torch.ones(target.shape[:-2], dtype=target.dtype, device=target.device)
    extrapolated = estimate.clone()
    active = torch.ones(target.shape[:-2], dtype=torch.bool, device=target.device)
    for _ in range(max_iterations):
        index = active.nonzero(as_tuple=True)
        t = momentum[index].unsqueeze(1)
        previous = estimate[index].unsqueeze(1)
        # gradient step Y - P(Y - A): A on the observed entries, Y elsewhere
        stepped = torch.addcmul(target[index], unobserved[index], extrapolated[index]).unsqueeze(1)
        new = singular_value_threshold(stepped, weight / 2, index[0])
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        y_next = new + ((t - 1) / t_next)[..., None, None] * (new - previous)
        change = (new - previous).flatten(-2).norm(dim=-1) / previous.flatten(-2).norm(dim=-1).clamp_min(1)
        estimate[index], extrapolated[index], momentum[index] = new.squeeze(1), y_next.squeeze(1), t_next.squeeze(1)
        active[index] = (change >= tolerance).squeeze(1)
        if not active.any():
            break
    return estimate


def unrolled_estimate(observed: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, threshold: torch.Tensor | float,
                      iterations: int, keep_observed: bool) -> torch.Tensor:
    """`iterations` proximal steps X <- SVT(P(A) + P_perp(X), t) from the constant `start`: a
    differentiable surrogate of `nuclear_norm` (t = weight / 2; the step of its FISTA without the
    momentum, which has the same fixed point) and, with `keep_observed` (observed entries returned
    as A), of `soft_impute` (its own update). Differentiable in `observed` by autograd through the
    Gram eigh (`lowrank_linalg.GuardedEigh`); near the real estimate, its fixed point, the output
    stays close to it and the Jacobian is the truncated unrolling of the fixed-point map.
    """
    estimate = start.detach()
    for _ in range(iterations):
        estimate = singular_value_threshold(torch.where(mask, observed, estimate), threshold)
    return torch.where(mask, observed, estimate) if keep_observed else estimate
