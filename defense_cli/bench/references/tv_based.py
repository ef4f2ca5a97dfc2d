"""References for the TV-based defenses: the same algorithms, one image and one channel at a time, in numpy.

- `tvm`: Chambolle-Pock TV inpainting of each channel of each image (the dropout mask is drawn
  with the defense's own generator call, per image).
- `lrc_hsp`: the keypoint mask from the defense's classifier (one image at a time), then FGP
  smoothing and RLKC (IALM, Algorithms 2 and 3 of `000_...` ch. 3) per channel, in float64 numpy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from defense_cli.bench.references import reference


def _lt(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.zeros_like(x)
    q = np.zeros_like(x)
    p[:-1] = x[:-1] - x[1:]
    q[:, :-1] = x[:, :-1] - x[:, 1:]
    return p, q


def _l(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = p + q
    out[1:] -= p[:-1]
    out[:, 1:] -= q[:, :-1]
    return out


def _project(p: np.ndarray, q: np.ndarray, bound: float, isotropic: bool) -> tuple[np.ndarray, np.ndarray]:
    if isotropic:
        scale = np.maximum(np.sqrt(p * p + q * q) / bound, 1.0)
        return p / scale, q / scale
    return np.clip(p, -bound, bound), np.clip(q, -bound, bound)


def _fgp(b: np.ndarray, weight: float, iterations: int, isotropic: bool) -> np.ndarray:
    if weight == 0:
        return np.clip(b, 0, 1)
    p_prev, q_prev = np.zeros_like(b), np.zeros_like(b)
    r, s, t = p_prev, q_prev, 1.0
    for _ in range(iterations):
        dp, dq = _lt(np.clip(b - weight * _l(r, s), 0, 1))
        p, q = _project(r + dp / (8 * weight), s + dq / (8 * weight), 1.0, isotropic)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        r, s = p + (t - 1) / t_next * (p - p_prev), q + (t - 1) / t_next * (q - q_prev)
        p_prev, q_prev, t = p, q, t_next
    return np.clip(b - weight * _l(p_prev, q_prev), 0, 1)


def _tv_inpaint(x: np.ndarray, keep: np.ndarray, weight: float, iterations: int, isotropic: bool) -> np.ndarray:
    tau = sigma = 1 / math.sqrt(8)
    z, z_bar = x.copy(), x.copy()
    p, q = np.zeros_like(x), np.zeros_like(x)
    for _ in range(iterations):
        dp, dq = _lt(z_bar)
        p, q = _project(p - sigma * dp, q - sigma * dq, weight, isotropic)
        z_next = np.clip((z + tau * _l(p, q) + 2 * tau * keep * x) / (1 + 2 * tau * keep), 0, 1)
        z_bar, z = 2 * z_next - z, z_next
    return z


def _svt(a: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    shrunk = np.maximum(s - thresholds, 0)
    return (u * shrunk) @ vh, shrunk


def _soft(x: np.ndarray, thresholds) -> np.ndarray:
    return np.sign(x) * np.maximum(np.abs(x) - thresholds, 0)


def _ialm(d: np.ndarray, params) -> tuple[np.ndarray, np.ndarray]:
    sparsity = 1 / math.sqrt(max(d.shape))
    spectral = max(np.linalg.norm(d, 2), np.finfo(d.dtype).tiny)
    y = d / max(spectral, np.abs(d).max() / sparsity)
    mu, mu_bar = 1.25 / spectral, 1.25e7 / spectral
    e = np.zeros_like(d)
    d_norm = max(np.linalg.norm(d), np.finfo(d.dtype).tiny)
    s = np.zeros(min(d.shape))
    for _ in range(params.ialm_iterations):
        a, s = _svt(d - e + y / mu, 1 / mu)
        e = _soft(d - a + y / mu, sparsity / mu)
        residual = d - a - e
        y = y + mu * residual
        mu = min(mu * params.ialm_growth, mu_bar)
        if np.linalg.norm(residual) / d_norm <= params.ialm_tol:
            break
    return s, e


def _smoothed_low_rank(d, observed, w_x, w_e, params) -> np.ndarray:
    x, z, e, y1, y2 = (np.zeros_like(d) for _ in range(5))
    d_norm = max(np.linalg.norm(d), np.finfo(d.dtype).tiny)
    mu = params.mu0
    for _ in range(params.inner_iterations):
        z, _ = _svt(0.5 * (d + x - e + (y1 + y2) / mu), w_x / (2 * mu))
        x = _fgp(z - y2 / mu, params.eta / mu, params.fgp_iterations, params.isotropic_tv)
        e = _soft(d - z + y1 / mu, params.lam * w_e * observed / mu)
        y1 = y1 + mu * (d - z - e)
        y2 = y2 + mu * (x - z)
        mu = min(params.mu_growth * mu, params.mu_max)
        if np.linalg.norm(d - z - e) / d_norm <= params.inner_tol:
            break
    return x


def _rlkc(image: np.ndarray, keypoints: np.ndarray, params) -> np.ndarray:
    observed = 1.0 - keypoints
    d = image * observed
    s, e = _ialm(d, params)
    w_x, w_e = 1 / (s + params.eps_x), 1 / (np.abs(e) + params.eps_e)
    completed = np.zeros_like(image)
    for _ in range(params.outer_iterations):
        new = _smoothed_low_rank(d, observed, w_x, w_e, params)
        change = np.linalg.norm((new - completed) * keypoints) / image.size
        completed, d = new, d * observed + new * keypoints
        if change <= params.outer_tol:
            break
    return completed


@reference("tvm")
def tvm_per_image(images: torch.Tensor, defense) -> torch.Tensor:
    generator = torch.Generator(device=images.device).manual_seed(0)
    out = []
    for image in images:
        keep = defense.dropout_mask(image[None], generator)[0, 0].cpu().numpy().astype(np.float64)
        channels = image.cpu().double().numpy()
        out.append(np.stack([_tv_inpaint(c, keep, defense.lambda_tv, defense.iterations, defense.isotropic)
                             for c in channels]))
    return torch.from_numpy(np.stack(out)).to(images)


@reference("lrc_hsp")
def lrc_hsp_per_image(images: torch.Tensor, defense) -> torch.Tensor:
    params = defense.rlkc_params
    out = []
    for image in images:
        keypoints = defense.keypoints(image[None])[0, 0].cpu().numpy().astype(np.float64)
        defended = []
        for channel in image.cpu().double().numpy():
            smoothed = _fgp(channel, defense.smoothing_weight, defense.smoothing_iterations, params.isotropic_tv)
            completed = _rlkc(channel, keypoints, params)
            defended.append(np.where(keypoints > 0, completed, smoothed))
        out.append(np.stack(defended))
    return torch.from_numpy(np.stack(out)).to(images)
