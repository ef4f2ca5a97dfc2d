"""Total variation (TV) of images and the FGP TV denoiser of Beck and Teboulle.

Beck and Teboulle 2009, "Fast gradient-based algorithms for constrained total variation image
denoising and deblurring problems" (reference [27] of `000_1720f31fb7e6036a.txt`), section 4:
the FGP algorithm solves

    min_{x in C}  ||x - b||_F^2 + 2 * weight * TV(x),       C = {lower <= x <= upper},

through its dual over pairs (p, q) with the operators `L` (their eq. 4.3) and its adjoint `L^T`.
LRC-HSP uses it for the TV smoothing of low-sensitivity pixels and for the X-step (eq. 3.19) of
Algorithm 2 (`000_...` ch. 3); TV minimisation (`tvm.py`) reuses the same operators.

Everything works on tensors (..., H, W): every leading dimension is a batch dimension. The pair
(p, q) is stored at full size (..., H, W) with a zero last row of p and a zero last column of q, the
boundary convention of Beck and Teboulle (p_{m,j} = 0, q_{i,n} = 0).
"""

from __future__ import annotations

import math

import torch


def operator_lt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Beck-Teboulle L^T: p_ij = x_ij - x_{i+1,j}, q_ij = x_ij - x_{i,j+1} (zero on the last row/column).

    It is minus the forward-difference gradient with Neumann boundary.
    """
    p = torch.zeros_like(x)
    q = torch.zeros_like(x)
    p[..., :-1, :] = x[..., :-1, :] - x[..., 1:, :]
    q[..., :, :-1] = x[..., :, :-1] - x[..., :, 1:]
    return p, q


def operator_l(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Beck-Teboulle L (eq. 4.3): L(p, q)_ij = p_ij + q_ij - p_{i-1,j} - q_{i,j-1}; the adjoint of L^T."""
    out = p + q
    out[..., 1:, :] -= p[..., :-1, :]
    out[..., :, 1:] -= q[..., :, :-1]
    return out


def project_dual(p: torch.Tensor, q: torch.Tensor, bound: float | torch.Tensor,
                 isotropic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Project (p, q) on the TV dual ball of radius `bound`.

    Isotropic: each pixel's (p_ij, q_ij) onto the disc of radius `bound`; anisotropic: each entry
    onto [-bound, bound] (Beck and Teboulle, section 4, the set P and its projection P_P).
    """
    if isotropic:
        scale = torch.sqrt(p * p + q * q).div_(bound).clamp_(min=1.0)
        return p / scale, q / scale
    return p.clamp(-bound, bound), q.clamp(-bound, bound)


def total_variation(x: torch.Tensor, isotropic: bool = True) -> torch.Tensor:
    """TV(x) summed over the last two dimensions (Beck-Teboulle's TV_I or TV_l1); shape x.shape[:-2]."""
    p, q = operator_lt(x)
    if isotropic:
        return torch.sqrt(p * p + q * q).sum(dim=(-2, -1))
    return (p.abs() + q.abs()).sum(dim=(-2, -1))


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
    p_prev, q_prev = torch.zeros_like(b), torch.zeros_like(b)
    r, s = p_prev, q_prev
    t = 1.0
    for _ in range(iterations):
        x = (b - weight * operator_l(r, s)).clamp_(lower, upper)
        dp, dq = operator_lt(x)
        p, q = project_dual(r + step * dp, s + step * dq, 1.0, isotropic)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        momentum = (t - 1.0) / t_next
        r = p + momentum * (p - p_prev)
        s = q + momentum * (q - q_prev)
        p_prev, q_prev, t = p, q, t_next
    return (b - weight * operator_l(p_prev, q_prev)).clamp_(lower, upper)


def denoising_objective(x: torch.Tensor, b: torch.Tensor, weight: float, isotropic: bool = True) -> torch.Tensor:
    """||x - b||^2 + 2 weight TV(x) per matrix (shape x.shape[:-2]): the objective FGP minimises."""
    return (x - b).square().sum(dim=(-2, -1)) + 2.0 * weight * total_variation(x, isotropic)
