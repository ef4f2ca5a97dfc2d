"""Reweighted Low-rank Keypoints Completion (RLKC), `000_1720f31fb7e6036a.txt` ch. 3, section 3.4.

Batched over every leading dimension of (..., m, n) matrices (for images: (B, C, H, W), one matrix
per channel). The pieces:

- `soft_threshold`: the non-uniform soft thresholding operator S of eq. 3.22 (the E-step);
- `singular_value_threshold`: the non-uniform singular value thresholding operator D of eq. 3.18
  (the Z-step; the proximal map of the weighted nuclear norm for non-decreasing weights);
- `ialm_rpca`: the inexact augmented Lagrange multiplier method of Lin, Chen and Ma 2010 ([89]),
  which initialises Algorithm 3;
- `smoothed_low_rank`: Algorithm 2 (ADM for the smoothed low-rank matrix, eq. 3.14-3.24);
- `rlkc`: Algorithm 3 (reweighting from IALM, then fixed-point refills of the keypoints).

Readings of the text (each one a parameter of `RLKCParams`):
- Algorithm 2 step 1 writes L = X^a + X - E + Y1/mu + Y2/mu and threshold W/mu, but the derivation
  (eq. 3.16-3.18) gives L = (X^a + X - E + Y1/mu + Y2/mu) / 2 and threshold W / (2 mu): the
  derivation is followed. Step 2 writes R = Z - Y2; eq. 3.20 gives R = Z - Y2/mu: eq. 3.20 is followed.
- X, E, Z, Y1, Y2 start at zero and mu at `mu0` (Algorithm 3: mu = 1e-6) in every call of
  Algorithm 2; mu grows by `mu_growth` (delta, not given a value: 1.5, the growth of IALM [89]) up
  to `mu_max` (1e10).
- The weights W^X = 1/(sigma_j + eps_x) and W^e = 1/(|E_1| + eps_e) are computed once from IALM
  (as Algorithm 3 is written); eps_x is not given a value: 1e-3, the value given for eps_e.
- The outer stopping rule ||X_{k+1} - X_k||_F over the keypoints / (mn) uses `outer_tol` (epsilon,
  not given a value: 1e-5).
- Inner and IALM loops stop per matrix (a matrix that has converged is frozen), so an image's
  result does not depend on the other images of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from defense_cli.defenses.cpu_threads import map_over_threads
from defense_cli.parameter_checks import check_int
from defense_cli.defenses.tv import fgp_denoise


@dataclass(frozen=True)
class RLKCParams:
    """Parameters of Algorithms 2 and 3 (defaults: the paper's, or the choice named in the module doc)."""

    lam: float = 8.0                # lambda of eq. 3.13 (section 3.5.3: 8)
    eta: float = 0.2                # eta of eq. 3.13, the TV weight (section 3.5.3: 0.2)
    outer_iterations: int = 3       # maxiter of Algorithm 3
    outer_tol: float = 1e-5         # epsilon of Algorithm 3
    inner_iterations: int = 100     # inneriter of Algorithm 2
    inner_tol: float = 1e-7         # xi of Algorithm 2
    mu0: float = 1e-6               # mu of Algorithm 3
    mu_max: float = 1e10            # mu_max of Algorithm 3
    mu_growth: float = 1.5          # delta of Algorithm 2
    eps_x: float = 1e-3             # epsilon_X of the singular-value weights
    eps_e: float = 1e-3             # epsilon_E of the error weights (Algorithm 3: 1e-3)
    fgp_iterations: int = 10        # FGP iterations of the X-step (eq. 3.19)
    isotropic_tv: bool = True       # isotropic (TV_I) or anisotropic (TV_l1) TV of Beck and Teboulle
    ialm_iterations: int = 100      # IALM iteration cap
    ialm_tol: float = 1e-6          # IALM stopping tolerance ||D - A - E||_F / ||D||_F
    ialm_growth: float = 1.5        # rho of IALM
    lower: float = 0.0              # Delta_L, lower pixel bound
    upper: float = 1.0              # Delta_U, upper pixel bound

    def __post_init__(self) -> None:
        positive = ("lam", "eta", "mu0", "mu_max", "eps_x", "eps_e")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        for name in ("outer_iterations", "inner_iterations", "fgp_iterations", "ialm_iterations"):
            check_int(name, getattr(self, name), 1)
        for name in ("mu_growth", "ialm_growth"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        for name in ("outer_tol", "inner_tol", "ialm_tol"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if not self.lower < self.upper:
            raise ValueError(f"lower={self.lower!r} must be below upper={self.upper!r}")


def soft_threshold(values: torch.Tensor, thresholds: torch.Tensor | float) -> torch.Tensor:
    """Non-uniform soft thresholding S_tau[x] = sign(x) max(|x| - tau, 0), tau per entry (eq. 3.22)."""
    return torch.sign(values) * (values.abs() - thresholds).clamp_min(0)


def checked_svd(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduced SVD of a batch; a failure or a non-finite result raises and names the batch index."""
    try:
        flat = matrices.reshape(-1, *matrices.shape[-2:])
        parts = map_over_threads(lambda chunk: torch.linalg.svd(chunk, full_matrices=False), flat)
        u, s, vh = (torch.cat([part[k] for part in parts]).reshape(*matrices.shape[:-2], *parts[0][k].shape[1:])
                    for k in range(3))
    except RuntimeError as err:
        bad = (~torch.isfinite(matrices)).flatten(-2).any(-1).nonzero().tolist()
        raise FloatingPointError(f"SVD failed on a batch of {tuple(matrices.shape)} matrices "
                                 f"(non-finite matrices at batch index {bad[:10]}): {err}") from err
    bad = ~torch.isfinite(s).all(-1)
    if bad.any():
        raise FloatingPointError(f"SVD gave non-finite singular values at batch index "
                                 f"{bad.nonzero().tolist()[:10]} (image, channel)")
    return u, s, vh


def singular_value_threshold(matrices: torch.Tensor, thresholds: torch.Tensor | float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-uniform SVT D_w(L) = U diag(max(sigma_j - w_j, 0)) V^T (eq. 3.18).

    `thresholds` broadcasts against the singular values (..., min(m, n)), sorted descending; returns
    the thresholded matrices and their singular values.
    """
    u, s, vh = checked_svd(matrices)
    shrunk = (s - thresholds).clamp_min(0)
    return (u * shrunk.unsqueeze(-2)) @ vh, shrunk


def frobenius(matrices: torch.Tensor) -> torch.Tensor:
    """Frobenius norm per matrix, shaped (..., 1, 1) for broadcasting."""
    return torch.linalg.matrix_norm(matrices).unsqueeze(-1).unsqueeze(-1)


def ialm_rpca(data: torch.Tensor, iterations: int = 100, tol: float = 1e-6, growth: float = 1.5
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inexact ALM for robust PCA (Lin, Chen and Ma 2010, Algorithm 5): data = A + E, A low-rank, E sparse.

    min ||A||_* + (1/sqrt(max(m, n))) ||E||_1; initialisation and mu schedule as in their code
    (Y = D / J(D), mu = 1.25 / ||D||_2, mu_bar = 1e7 mu). Returns A, its singular values and E.
    """
    m, n = data.shape[-2:]
    sparsity = 1.0 / math.sqrt(max(m, n))
    tiny = torch.finfo(data.dtype).tiny
    spectral = torch.linalg.matrix_norm(data, ord=2).clamp_min(tiny).unsqueeze(-1).unsqueeze(-1)
    largest = data.abs().amax(dim=(-2, -1), keepdim=True) / sparsity
    multiplier = data / torch.maximum(spectral, largest)
    mu = 1.25 / spectral
    mu_bar = mu * 1e7
    data_norm = frobenius(data).clamp_min(tiny)
    low_rank = torch.zeros_like(data)
    sparse = torch.zeros_like(data)
    singular = torch.zeros(data.shape[:-2] + (min(m, n),), dtype=data.dtype, device=data.device)
    active = torch.ones_like(mu, dtype=torch.bool)
    for _ in range(iterations):
        new_low_rank, new_singular = singular_value_threshold(data - sparse + multiplier / mu, 1.0 / mu.squeeze(-1))
        new_sparse = soft_threshold(data - new_low_rank + multiplier / mu, sparsity / mu)
        residual = data - new_low_rank - new_sparse
        low_rank = torch.where(active, new_low_rank, low_rank)
        sparse = torch.where(active, new_sparse, sparse)
        singular = torch.where(active.squeeze(-1), new_singular, singular)
        multiplier = torch.where(active, multiplier + mu * residual, multiplier)
        mu = torch.where(active, torch.minimum(mu * growth, mu_bar), mu)
        active = active & (frobenius(residual) / data_norm > tol)
        if not active.any():
            break
    return low_rank, singular, sparse


def smoothed_low_rank(data: torch.Tensor, observed: torch.Tensor, weights_x: torch.Tensor,
                      weights_e: torch.Tensor, params: RLKCParams) -> torch.Tensor:
    """Algorithm 2: ADM for min sum w_j sigma_j(Z) + eta TV(X) + lam ||W^e . M^ . E||_1 (eq. 3.14).

    data: X^a' (..., m, n); observed: M^ (1 on low-sensitivity pixels); weights_x: W^X (..., min(m, n));
    weights_e: W^e (..., m, n). Returns X, which satisfies the box constraint.
    """
    x = torch.zeros_like(data)
    z = torch.zeros_like(data)
    error = torch.zeros_like(data)
    y1 = torch.zeros_like(data)
    y2 = torch.zeros_like(data)
    error_thresholds = params.lam * weights_e * observed
    data_norm = frobenius(data).clamp_min(torch.finfo(data.dtype).tiny)
    active = torch.ones_like(data_norm, dtype=torch.bool)
    mu = params.mu0
    for _ in range(params.inner_iterations):
        target = 0.5 * (data + x - error + (y1 + y2) / mu)                                   # eq. 3.17
        new_z, _ = singular_value_threshold(target, weights_x / (2.0 * mu))                  # eq. 3.18
        new_x = fgp_denoise(new_z - y2 / mu, params.eta / mu, params.fgp_iterations,         # eq. 3.19-3.20
                            params.isotropic_tv, params.lower, params.upper)
        new_error = soft_threshold(data - new_z + y1 / mu, error_thresholds / mu)             # eq. 3.22
        residual = data - new_z - new_error
        y1 = torch.where(active, y1 + mu * residual, y1)                                     # eq. 3.23
        y2 = torch.where(active, y2 + mu * (new_x - new_z), y2)                              # eq. 3.24
        x = torch.where(active, new_x, x)
        z = torch.where(active, new_z, z)
        error = torch.where(active, new_error, error)
        mu = min(params.mu_growth * mu, params.mu_max)
        active = active & (frobenius(residual) / data_norm > params.inner_tol)
        if not active.any():
            break
    return x


def rlkc(images: torch.Tensor, keypoints: torch.Tensor, params: RLKCParams = RLKCParams()) -> torch.Tensor:
    """Algorithm 3: complete the keypoints (keypoints = M = 1) of (..., m, n) matrices; returns X.

    `keypoints` is a 0/1 or boolean tensor broadcastable to `images`.
    """
    keypoints = keypoints.to(images.dtype).expand_as(images)
    observed = 1.0 - keypoints
    data = images * observed                                                   # X^a' = X^a . M^
    _, singular, sparse = ialm_rpca(data, params.ialm_iterations, params.ialm_tol, params.ialm_growth)
    weights_x = 1.0 / (singular + params.eps_x)
    weights_e = 1.0 / (sparse.abs() + params.eps_e)
    completed = torch.zeros_like(images)                                       # X_0 = O
    active = torch.ones(images.shape[:-2] + (1, 1), dtype=torch.bool, device=images.device)
    size = images.shape[-2] * images.shape[-1]
    for _ in range(params.outer_iterations):
        new = smoothed_low_rank(data, observed, weights_x, weights_e, params)
        change = frobenius((new - completed) * keypoints) / size
        completed = torch.where(active, new, completed)
        data = torch.where(active, data * observed + new * keypoints, data)
        active = active & (change > params.outer_tol)
        if not active.any():
            break
    return completed
