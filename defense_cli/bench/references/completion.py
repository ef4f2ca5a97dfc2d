"""References for the completion defenses (SPLIC, SRF, ME-Net), drawn on the defense's own masks.

- SPLIC / SRF: a straightforward batched torch version of Algorithm 4 (`000_...` ch. 4): full
  `torch.linalg.svd` per iteration, singular values zeroed beyond r, eq. 4.9 and the TV gradient
  written out, every matrix iterated for maxiter steps (a converged one is only frozen).
- ME-Net USVT: per image in numpy, as in ME-Net's released code (`np.linalg.svd`, keep the
  leading values, divide by the observed fraction).
- ME-Net Soft-Impute: per image in numpy with fancyimpute's SoftImpute loop.
- ME-Net nuclear norm: cvxpy is not installed here, so the "generic solver" is a per-image
  float64 numpy proximal-gradient (FISTA) solver run to a tight tolerance (1e-10 relative change,
  20,000 iterations at most): the same convex problem, solved to near machine precision.
"""

from __future__ import annotations

import numpy as np
import torch

from defense_cli.bench.references import reference, reference_generator
from defense_cli.defenses.image_matrices import to_images, to_matrices

NUCLEAR_TOLERANCE = 1e-10
NUCLEAR_MAX_ITERATIONS = 20_000


def _tv_gradient_reference(x: torch.Tensor, form: str) -> torch.Tensor:
    """eq. 4.10 by padding (forward differences), plus the backward terms for the exact gradient."""
    down = torch.nn.functional.pad(x[..., :-1, :] - x[..., 1:, :], (0, 0, 0, 1))
    right = torch.nn.functional.pad(x[..., :, :-1] - x[..., :, 1:], (0, 1, 0, 0))
    grad = down + right
    if form == "exact":
        grad = grad - torch.nn.functional.pad(x[..., :-1, :] - x[..., 1:, :], (0, 0, 1, 0))
        grad = grad - torch.nn.functional.pad(x[..., :, :-1] - x[..., :, 1:], (1, 0, 0, 0))
    return grad


def _splic_pass(observed: torch.Tensor, anchors: torch.Tensor, defense, blocks: int) -> torch.Tensor:
    """Algorithm 4 on matrices made of `blocks` channel blocks side by side (TV inside each block)."""
    x = torch.where(anchors, observed, torch.zeros_like(observed))
    delta = torch.linalg.svdvals(x)[..., :1, None]
    frozen = torch.zeros(x.shape[:-2] + (1, 1), dtype=torch.bool, device=x.device)
    tv_weight = getattr(defense, "tv_weight", 0.0)
    t = 0
    while t < defense.max_iterations and not frozen.all():
        for _ in range(defense.inner_iterations):
            u, s, vh = torch.linalg.svd(x, full_matrices=False)
            s = torch.where(torch.arange(s.shape[-1], device=s.device) < defense.rank, s, torch.zeros_like(s))
            x_r = u @ torch.diag_embed(s) @ vh
            grad_f = u @ torch.diag_embed(s / delta.squeeze(-1) ** 2 * torch.exp(-s**2 / (2 * delta.squeeze(-1) ** 2))) @ vh
            if defense.srf_step == "delta2":
                grad_f = grad_f * delta**2
            update = grad_f
            if tv_weight:
                tv = [_tv_gradient_reference(block, defense.tv_gradient) for block in x_r.chunk(blocks, dim=-1)]
                update = update + tv_weight * torch.cat(tv, dim=-1)
            new = torch.where(anchors, observed, x_r - defense.step * update)
            change = (new - x).flatten(-2).norm(dim=-1)[..., None, None] / (x.shape[-1] * x.shape[-2])
            x = torch.where(frozen, x, new)
            t += 1
        delta = delta * defense.shrink
        frozen = frozen | (change <= defense.tolerance)
    return x


@reference("splic")
@reference("srf")
def splic_straightforward(images: torch.Tensor, defense) -> torch.Tensor:
    anchors = defense.sample_anchors(images, reference_generator(images.device))
    matrices = to_matrices(images, defense.channel_mode)
    mask = to_matrices(anchors.expand_as(images), defense.channel_mode)
    blocks = images.shape[1] if defense.channel_mode == "concat" else 1
    out = _splic_pass(matrices, mask, defense, blocks)
    if defense.alternate:
        out = _splic_pass(out, ~mask, defense, blocks)
    return to_images(out, defense.channel_mode, images.shape[1]).clamp(0, 1)


def usvt_numpy(a: np.ndarray, mask: np.ndarray, keep: int) -> np.ndarray:
    u, sigma, vt = np.linalg.svd(a * mask)
    s = np.zeros((u.shape[0], vt.shape[0]))
    for j in range(keep):
        s[j, j] = sigma[j]
    return np.dot(np.dot(u, s), vt) / (mask.sum() / mask.size)


def soft_impute_numpy(a: np.ndarray, mask: np.ndarray, tolerance: float, max_iterations: int,
                      shrinkage: float | None) -> np.ndarray:
    filled = a * mask
    missing = ~mask
    threshold = shrinkage if shrinkage is not None else np.linalg.svd(filled, compute_uv=False)[0] / 50
    for _ in range(max_iterations):
        u, s, vt = np.linalg.svd(filled, full_matrices=False)
        estimate = (u * np.maximum(s - threshold, 0)) @ vt
        old, new = filled[missing], estimate[missing]
        old_norm = np.sqrt((old**2).sum())
        converged = old_norm > 0 and np.sqrt(((old - new) ** 2).sum()) / old_norm < tolerance
        filled[missing] = new
        if converged:
            break
    return filled


def nuclear_numpy(a: np.ndarray, mask: np.ndarray, weight: float) -> np.ndarray:
    x = a * mask
    y, t = x.copy(), 1.0
    for _ in range(NUCLEAR_MAX_ITERATIONS):
        u, s, vt = np.linalg.svd(np.where(mask, a, y), full_matrices=False)
        new = (u * np.maximum(s - weight / 2, 0)) @ vt
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = new + (t - 1) / t_next * (new - x)
        done = np.linalg.norm(new - x) <= NUCLEAR_TOLERANCE * max(1.0, np.linalg.norm(x))
        x, t = new, t_next
        if done:
            break
    return x


@reference("menet")
@reference("menet_usvt")
@reference("menet_softimpute")
def menet_per_image(images: torch.Tensor, defense) -> torch.Tensor:
    mask = defense.sample_mask(images, defense.test_probability, reference_generator(images.device))
    matrices = (to_matrices(images, defense.channel_mode) * 2 - 1).double().cpu().numpy()
    masks = mask.cpu().numpy()
    out = np.empty_like(matrices)
    for b in range(matrices.shape[0]):
        for k in range(matrices.shape[1]):
            a, m = matrices[b, k], masks[b, k]
            if defense.method == "usvt":
                out[b, k] = usvt_numpy(a, m, int(defense.usvt_fraction * min(a.shape)))
            elif defense.method == "softimpute":
                out[b, k] = soft_impute_numpy(a, m, defense.softimpute_tolerance, defense.softimpute_max_iterations,
                                              defense.softimpute_shrinkage)
            else:
                out[b, k] = nuclear_numpy(a, m, defense.nuclear_weight)
    estimate = (torch.from_numpy(np.clip(out, -1, 1)) + 1) / 2
    return to_images(estimate.to(images.dtype), defense.channel_mode, images.shape[1]).to(images.device)
