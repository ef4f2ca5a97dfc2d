"""Total variation (TV) of images and the FGP TV denoiser of Beck and Teboulle.

Beck and Teboulle 2009, "Fast gradient-based algorithms for constrained total variation image
denoising and deblurring problems" (reference [27] of `000_1720f31fb7e6036a.txt`), section 4:
the FGP algorithm solves

    min_{x in C}  ||x - b||_F^2 + 2 * weight * TV(x),       C = {lower <= x <= upper},

through its dual over pairs (p, q) with the operators `L` (their eq. 4.3) and its adjoint `L^T`.
LRC-HSP uses it for the TV smoothing of low-sensitivity pixels and for the X-step (eq. 3.19) of
Algorithm 2 (`000_...` ch. 3); TV minimisation (`tvm.py`) reuses the same operators.

Everything works on tensors (..., H, W): every leading dimension is a batch dimension. The dual
pair (p, q) is stored stacked, (2, ..., H, W), at full size with a zero last row of p and a zero
last column of q, the boundary convention of Beck and Teboulle (p_{m,j} = 0, q_{i,n} = 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def operator_lt(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Beck-Teboulle L^T as one stacked tensor (2, ..., H, W): p = out[0], q = out[1] with
    p_ij = x_ij - x_{i+1,j}, q_ij = x_ij - x_{i,j+1}, zero on the last row / column.

    It is minus the forward-difference gradient with Neumann boundary. `out` (same shape as the
    result, zero last row of out[0] and last column of out[1]) is reused when given; without it the
    result is a new tensor that autograd can differentiate.
    """
    if out is None:   # out-of-place, so that autograd can differentiate it
        vertical = F.pad(x[..., :-1, :] - x[..., 1:, :], (0, 0, 0, 1))
        horizontal = F.pad(x[..., :, :-1] - x[..., :, 1:], (0, 1))
        return torch.stack((vertical, horizontal))
    torch.sub(x[..., :-1, :], x[..., 1:, :], out=out[0, ..., :-1, :])
    torch.sub(x[..., :, :-1], x[..., :, 1:], out=out[1, ..., :, :-1])
    return out


def operator_l(pq: torch.Tensor) -> torch.Tensor:
    """Beck-Teboulle L (eq. 4.3) of a stacked pair: p_ij + q_ij - p_{i-1,j} - q_{i,j-1}; the adjoint of L^T."""
    p, q = pq[0], pq[1]
    out = p + q
    out[..., 1:, :] -= p[..., :-1, :]
    out[..., :, 1:] -= q[..., :, :-1]
    return out


def project_dual_(pq: torch.Tensor, bound: float, isotropic: bool) -> torch.Tensor:
    """Project a stacked pair (p, q) in place on the TV dual ball of radius `bound`.

    Isotropic: each pixel's (p_ij, q_ij) onto the disc of radius `bound`; anisotropic: each entry
    onto [-bound, bound] (Beck and Teboulle, section 4, the set P and its projection P_P).
    """
    if isotropic:
        return pq.div_(torch.hypot(pq[0], pq[1]).div_(bound).clamp_(min=1.0))
    return pq.clamp_(-bound, bound)


def total_variation(x: torch.Tensor, isotropic: bool = True) -> torch.Tensor:
    """TV(x) summed over the last two dimensions (Beck-Teboulle's TV_I or TV_l1); shape x.shape[:-2]."""
    pq = operator_lt(x)
    if isotropic:
        return torch.hypot(pq[0], pq[1]).sum(dim=(-2, -1))
    return pq.abs().sum(dim=(0, -2, -1))


def fgp_denoise(b: torch.Tensor, weight: float, iterations: int = 20, isotropic: bool = True,
                lower: float = 0.0, upper: float = 1.0) -> torch.Tensor:
    """FGP (Beck and Teboulle 2009, section 4.2): argmin_{lower <= x <= upper} ||x - b||^2 + 2 weight TV(x).

    `b` is (..., H, W); every leading dimension is batched. `iterations` is N of the algorithm
    (a fixed count, as in the paper). weight = 0 returns the projection of b on the box.
    """
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"weight={weight!r} must be a finite number >= 0")
    if iterations < 1:
        raise ValueError(f"iterations={iterations!r} must be >= 1")
    if weight == 0:
        return b.clamp(lower, upper)
    step = 1.0 / (8.0 * weight)
    previous = b.new_zeros((2,) + b.shape)
    extrapolated = previous
    differences = b.new_zeros((2,) + b.shape)
    t = 1.0
    for _ in range(iterations):
        x = (b - weight * operator_l(extrapolated)).clamp_(lower, upper)
        current = project_dual_(torch.add(extrapolated, operator_lt(x, differences), alpha=step), 1.0, isotropic)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        extrapolated = torch.lerp(current, previous, -(t - 1.0) / t_next)
        previous, t = current, t_next
    return (b - weight * operator_l(previous)).clamp_(lower, upper)


def denoising_objective(x: torch.Tensor, b: torch.Tensor, weight: float, isotropic: bool = True) -> torch.Tensor:
    """||x - b||^2 + 2 weight TV(x) per matrix (shape x.shape[:-2]): the objective FGP minimises."""
    return (x - b).square().sum(dim=(-2, -1)) + 2.0 * weight * total_variation(x, isotropic)
