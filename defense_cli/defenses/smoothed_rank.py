"""Smoothed-rank-function (SRF) matrix completion with an optional TV term: the core of SRF and SPLIC.

Source: `000_1720f31fb7e6036a.txt` ch. 4 (sections 4.3.2-4.3.4, eq. 4.3-4.10, Algorithm 4) and
`001_8192944065db7cae.txt` (section 3, Algorithm 1). All functions work on stacks of matrices
(N, K, m, n) at once; `complete` runs Algorithm 4 on every matrix of the stack together.

- eq. 4.3  F_delta(X) = l - sum_k exp(-sigma_k^2 / (2 delta^2))               `smoothed_rank`
- eq. 4.9  grad F_delta(X) = U diag(sigma_k / delta^2 exp(-sigma_k^2 / (2 delta^2))) V^T
                                                                              `smoothed_rank_gradient`
- eq. 4.6  C(X) = 1/2 sum of squared vertical and horizontal neighbour differences   `tv_cost`
- eq. 4.10 its gradient                                                       `tv_gradient`

Choice (documented, config `tv_gradient`): eq. 4.10 as printed keeps only the forward-difference
terms (2 x_ij - x_{i+1,j} - x_{i,j+1}); the derivative of eq. 4.6 also has the backward terms
(each squared difference involves two pixels), i.e. the 4-neighbour Laplacian with free borders.
`"exact"` (default) is the true gradient of eq. 4.6, checked against autograd, so that the update
of Algorithm 4 is a gradient step on eq. 4.5; `"printed"` is eq. 4.10 literally.

A matrix may hold several channel blocks side by side (ME-Net-style concatenation); the TV term
then only couples pixels within the same block of width `block`, never across a channel seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defense_cli.defenses.lowrank_linalg import largest_singular_value, leading_subspace

TV_GRADIENTS = ("exact", "printed")


def srf_weights(squared: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """exp(-sigma^2 / (2 delta^2)) / delta^2: eq. 4.9 divided by sigma (delta broadcast per matrix)."""
    delta2 = delta.pow(2).unsqueeze(-1)
    return torch.exp(-squared / (2 * delta2)) / delta2


def smoothed_rank(matrices: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """F_delta of eq. 4.3 for each matrix, (N, K); `delta` is (N, K)."""
    sigma = torch.linalg.svdvals(matrices)
    return sigma.shape[-1] - torch.exp(-sigma.pow(2) / (2 * delta.pow(2).unsqueeze(-1))).sum(-1)


def smoothed_rank_gradient(matrices: torch.Tensor, delta: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """eq. 4.9 on the `rank` leading singular pairs (all of them by default)."""
    rank = rank or min(matrices.shape[-2:])
    subspace = leading_subspace(matrices, rank)
    return subspace.expand(srf_weights(subspace.squared, delta))


def _blocks(matrices: torch.Tensor, block: int) -> torch.Tensor:
    """(..., m, c*block) -> (..., c, m, block): one grid per channel block."""
    *lead, m, n = matrices.shape
    return matrices.reshape(*lead, m, n // block, block).movedim(-2, -3)


def _unblocks(grids: torch.Tensor) -> torch.Tensor:
    *lead, c, m, block = grids.shape
    return grids.movedim(-3, -2).reshape(*lead, m, c * block)


def tv_cost(matrices: torch.Tensor, block: int) -> torch.Tensor:
    """C(X) of eq. 4.6 per matrix: half the sum of squared vertical and horizontal differences."""
    grids = _blocks(matrices, block)
    vertical = (grids[..., :-1, :] - grids[..., 1:, :]).pow(2).sum((-3, -2, -1))
    horizontal = (grids[..., :, :-1] - grids[..., :, 1:]).pow(2).sum((-3, -2, -1))
    return (vertical + horizontal) / 2


def tv_gradient(matrices: torch.Tensor, block: int, form: str = "exact") -> torch.Tensor:
    """Gradient of C (eq. 4.6): `exact` = derivative of eq. 4.6; `printed` = eq. 4.10 as printed."""
    grids = _blocks(matrices, block)
    down = grids[..., :-1, :] - grids[..., 1:, :]     # x_ij - x_{i+1,j}
    right = grids[..., :, :-1] - grids[..., :, 1:]    # x_ij - x_{i,j+1}
    grad = torch.zeros_like(grids)
    grad[..., :-1, :] += down
    grad[..., :, :-1] += right
    if form == "exact":
        grad[..., 1:, :] -= down
        grad[..., :, 1:] -= right
    return _unblocks(grad)


def objective(matrices: torch.Tensor, delta: torch.Tensor, tv_weight: float, block: int) -> torch.Tensor:
    """eq. 4.5: F_delta(X) + lambda C(X), per matrix."""
    return smoothed_rank(matrices, delta) + tv_weight * tv_cost(matrices, block)


@dataclass(frozen=True)
class CompletionSettings:
    """Parameters of Algorithm 4 (`000_...` ch. 4): names follow the paper's symbols."""

    rank: int = 8                    # r: rank cap (r = R/4 = 8 for 32x32, `001_...` section 3.7)
    step: float = 0.5                # mu
    tv_weight: float = 0.02          # lambda (0: SRF, the ablation of `001_...` Table 4)
    shrink: float = 0.45             # rho: delta <- rho * delta after each inner loop
    inner_iterations: int = 7        # the "for i = 1 to 7" loop
    tolerance: float = 1e-6          # epsilon of the stopping rule ||X_{t+1} - X_t||_F / (mn)
    max_iterations: int = 56         # maxiter, counted in inner iterations (t)
    tv_gradient: str = "exact"
    srf_step: str = "delta2"         # "delta2": mu delta^2 grad F (SRF/SL0 normalisation); "plain": mu grad F


def completion_step(current: torch.Tensor, targets: torch.Tensor, anchored: torch.Tensor,
                    delta: torch.Tensor, settings: CompletionSettings, block: int,
                    owners: torch.Tensor | None = None) -> torch.Tensor:
    """One inner iteration of Algorithm 4 (lines 4-9) on a (N, K, m, n) stack.

    Lines 4-5: SVD truncated to rank r (X_r); 6-7: gradients of F_delta (eq. 4.9) and C at X_r;
    8: X~ = X_r - mu (grad F + lambda grad C); 9: X_t+1 = (1 - M) (.) X~ + M (.) X, with
    `targets` = 1 - M (float) and `anchored` = M (.) X.
    """
    rank = min(settings.rank, *current.shape[-2:])
    subspace = leading_subspace(current, rank, owners)
    srf_scale = delta.pow(2).unsqueeze(-1) if settings.srf_step == "delta2" else 1.0
    weights = 1 - settings.step * srf_scale * srf_weights(subspace.squared, delta)
    updated = subspace.expand(weights)
    if settings.tv_weight:
        truncated = subspace.expand(torch.ones_like(weights))
        updated = updated - settings.step * settings.tv_weight * tv_gradient(truncated, block, settings.tv_gradient)
    return torch.addcmul(anchored, targets, updated)


def anchor_terms(observed: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - M) as a float mask and M (.) X: the two terms of the projection (line 9)."""
    return (~anchors).to(observed.dtype), torch.where(anchors, observed, torch.zeros_like(observed))


def complete(observed: torch.Tensor, anchors: torch.Tensor, settings: CompletionSettings, block: int) -> torch.Tensor:
    """Algorithm 4 (one pass) on every matrix of a (B, K, m, n) stack; anchors (bool) are kept exactly.

    Initialisation X_0 = X (.) M and delta = sigma_1(X_0) per matrix; each outer round runs the 7
    inner iterations, then delta <- rho delta. A matrix stops when its last change
    ||X_{t+1} - X_t||_F / (mn) is <= epsilon (it is then left out of later rounds), all stop when
    t >= maxiter.
    """
    batch, per_image, m, n = observed.shape
    targets, anchored = (t.reshape(-1, 1, m, n) for t in anchor_terms(observed, anchors))
    current = anchored.clone()
    owners = torch.arange(batch, device=observed.device).repeat_interleave(per_image)
    delta = largest_singular_value(current, owners).clamp_min(torch.finfo(observed.dtype).tiny)
    active = torch.ones(len(current), dtype=torch.bool, device=observed.device)
    t = 0
    while t < settings.max_iterations and bool(active.any()):
        index = active.nonzero().squeeze(1)
        x, free, fixed, d = current[index], targets[index], anchored[index], delta[index]
        for _ in range(settings.inner_iterations - 1):
            x = completion_step(x, free, fixed, d, settings, block, owners[index])
        new = completion_step(x, free, fixed, d, settings, block, owners[index])
        t += settings.inner_iterations
        current[index] = new
        delta[index] = d * settings.shrink
        active[index] = (new - x).flatten(1).norm(dim=1) / (m * n) > settings.tolerance
    return current.reshape(batch, per_image, m, n)


def alternated_complete(images: torch.Tensor, anchors: torch.Tensor, settings: CompletionSettings,
                        block: int) -> torch.Tensor:
    """Section 4.3.4: complete the targets from the anchors, then swap and re-estimate the anchors."""
    first = complete(images, anchors, settings, block)
    return complete(first, ~anchors, settings, block)


def last_delta(observed: torch.Tensor, anchors: torch.Tensor, settings: CompletionSettings) -> torch.Tensor:
    """delta of `complete`'s last round, sigma_1(X (.) M) rho^(rounds - 1), for a (B, K, m, n) stack.

    Assumes the pass ran all ceil(maxiter / 7) rounds (the stopping rule rarely fires early)."""
    rounds = -(-settings.max_iterations // settings.inner_iterations)
    anchored = torch.where(anchors, observed, torch.zeros_like(observed))
    sigma = largest_singular_value(anchored).clamp_min(torch.finfo(observed.dtype).tiny)
    return sigma * settings.shrink ** (rounds - 1)


def refine(observed: torch.Tensor, anchors: torch.Tensor, start: torch.Tensor, settings: CompletionSettings,
           block: int, iterations: int) -> torch.Tensor:
    """`iterations` inner iterations of Algorithm 4 (lines 4-9) from `start` at the last round's delta.

    Differentiable in `observed` (autograd through the Gram eigh, `GuardedEigh`); `start`, the
    real completion, is a constant. Near its fixed point this keeps the output of `complete`, and
    its Jacobian is the truncated unrolling of the fixed-point map X -> step(X; M (.) observed).
    """
    targets, anchored = anchor_terms(observed, anchors)
    delta = last_delta(observed, anchors, settings)
    current = torch.where(anchors, observed, start.detach())
    for _ in range(iterations):
        current = completion_step(current, targets, anchored, delta, settings, block)
    return current


def unrolled_complete(observed: torch.Tensor, anchors: torch.Tensor, settings: CompletionSettings, block: int,
                      iterations: int, alternate: bool) -> torch.Tensor:
    """A differentiable surrogate of `complete` / `alternated_complete`: each pass is run for real
    (no gradient) and then `refine`d from its own output, the second pass on the refined first."""
    with torch.no_grad():
        first = complete(observed.detach(), anchors, settings, block)
        second = complete(first, ~anchors, settings, block) if alternate else None
    out = refine(observed, anchors, first, settings, block, iterations)
    return refine(out, ~anchors, second, settings, block, iterations) if alternate else out
