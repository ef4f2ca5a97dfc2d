"""Low-rank solvers on response matrices: L1-LRAR (ADMM), NL2A, and the plain L2 solution.

All solvers see a layer through sampled responses, one column per point:
`Y` (n x N), the original layer's outputs on the original inputs, and `Y_hat` (n x N), the
original layer's outputs on the inputs of the already approximated network (the asymmetric
target of `000_1720f31fb7e6036a.txt` section 2.3.3 / 2.6.2; `Y_hat = Y` for a lone layer).
Each returns a `LowRankMap`: y ~ P @ Qt @ y_hat + b with P (n x m), Qt (m x n), which turns the
conv W into m basic filters Qt W followed by a 1x1 conv P with bias b (eq. 2.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LowRankMap:
    """M = P @ Qt of rank m and the bias b (eq. 2.5-2.6, b = y_bar - M y_hat_bar of eq. 2.11)."""

    P: torch.Tensor
    Qt: torch.Tensor
    bias: torch.Tensor
    residuals: list[float] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.P.shape[1]

    def apply(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.P @ (self.Qt @ y_hat) + self.bias[:, None]


def check_rank(rank: int, Y: torch.Tensor) -> None:
    """A rank in 1..n, and at least n sampled points so that the n x n regression is posed."""
    n, points = Y.shape
    if not 1 <= rank <= n:
        raise ValueError(f"rank={rank} is not allowed for a layer with {n} filters: use 1..{n}")
    if points < n:
        raise ValueError(f"{points} sampled response points are too few for a layer with {n} filters "
                         f"(rank {rank}): raise compress.samples / compress.images to at least {n} points")


class ReducedRankRegression:
    """argmin_{rank(M) <= m} ||M H - W||_F (eq. 2.15-2.16) for a fixed H and any W, as (P, Qt).

    The full-rank solution is M_hat = W H^T (H H^T)^+. Its GSVD under the metric H H^T (Lemma 1,
    with R_H the symmetric square root of H H^T) is the ordinary SVD of M_hat R_H: with U_m its
    first m left singular vectors, M = U_m U_m^T M_hat. The pseudo-inverse stands in for the inverse
    where H H^T is singular (no GSVD in SciPy is needed). H H^T, its pseudo-inverse and root are
    computed once (in float64) and reused by every ADMM iteration.
    """

    def __init__(self, H: torch.Tensor) -> None:
        self.H = H
        gram = (H.double() @ H.double().T)
        values, vectors = torch.linalg.eigh(gram)
        # directions of H H^T below the input's precision are treated as null (pinv's rule with the
        # data's dtype: float32 responses leave ~1e-7 relative noise in H's null space)
        keep = values > values.max().clamp_min(1e-300) * H.shape[0] * torch.finfo(H.dtype).eps
        inverse = torch.where(keep, 1 / values.clamp_min(1e-300), torch.zeros_like(values))
        self.gram_pinv = (vectors * inverse) @ vectors.T
        self.gram_root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T

    def solve(self, W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        M_full = (W.double() @ self.H.double().T) @ self.gram_pinv
        U = torch.linalg.svd(M_full @ self.gram_root).U[:, :rank]
        return U.to(W.dtype), (U.T @ M_full).to(W.dtype)


def centered(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = Y.mean(dim=1)
    return Y - mean[:, None], mean


def l2_lowrank(Y: torch.Tensor, Y_hat: torch.Tensor, rank: int) -> LowRankMap:
    """The plain L2 (Frobenius) asymmetric solution: one reduced-rank regression, no outliers model."""
    check_rank(rank, Y)
    Z, y_mean = centered(Y)
    H, h_mean = centered(Y_hat)
    P, Qt = ReducedRankRegression(H).solve(Z, rank)
    return LowRankMap(P, Qt, y_mean - P @ (Qt @ h_mean))


def soft_threshold(Q: torch.Tensor, threshold: float) -> torch.Tensor:
    """S_t(q) = sgn(q) max(|q| - t, 0), the E-step of eq. 2.18."""
    return torch.sign(Q) * torch.clamp(Q.abs() - threshold, min=0)


def l1_lrar(Y: torch.Tensor, Y_hat: torch.Tensor, rank: int, lam: float | None = None, mu: float = 1e-3,
            delta: float = 1.1, mu_max: float = 1e10, tol: float = 1e-7, max_iter: int = 500) -> LowRankMap:
    """L1-norm low-rank approximation, Algorithm 1 of `000_1720f31fb7e6036a.txt` (section 2.4-2.5).

    min ||M||_* + lam ||E||_1 s.t. E = Z - M H (eq. 2.12) with Z = Y - Y_bar, H = Y_hat - Y_hat_bar,
    by ADMM on the augmented Lagrangian (eq. 2.13): M-step = reduced-rank regression of
    Z - E + L/mu on H at the fixed rank (eq. 2.14-2.16), E-step = soft thresholding at lam/mu
    (eq. 2.18), L += mu (Z - M H - E) (eq. 2.19), mu = min(delta mu, mu_max); stop when
    ||Z - M H - E||_F / ||Z||_F < tol (eq. 2.20) or after `max_iter` iterations.

    Choices where the text is silent: lam defaults to 1 / sqrt(max(n, N)) (robust PCA, its ref.
    [35]); L starts at H / ||H||_F as Algorithm 1 writes. The residual (eq. 2.20) of every
    iteration is kept in `residuals`. Cost per iteration: about 2 n^2 N multiply-adds.
    """
    check_rank(rank, Y)
    Z, y_mean = centered(Y)
    H, h_mean = centered(Y_hat)
    lam = lam if lam is not None else 1.0 / max(Z.shape) ** 0.5
    z_norm = torch.linalg.norm(Z).clamp_min(torch.finfo(Z.dtype).tiny)
    E = torch.zeros_like(Z)
    L = H / torch.linalg.norm(H).clamp_min(torch.finfo(H.dtype).tiny)
    regression = ReducedRankRegression(H)
    residuals: list[float] = []
    for _ in range(max_iter):
        P, Qt = regression.solve(Z - E + L / mu, rank)
        MH = P @ (Qt @ H)
        E = soft_threshold(Z - MH + L / mu, lam / mu)
        gap = Z - MH - E
        L = L + mu * gap
        mu = min(delta * mu, mu_max)
        residuals.append(float(torch.linalg.norm(gap) / z_norm))
        if residuals[-1] < tol:
            break
    return LowRankMap(P, Qt, y_mean - P @ (Qt @ h_mean), residuals)


def relu_target(y: torch.Tensor, target: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_z (relu(y) - relu(z))^2 + lam (z - target)^2, element-wise (Zhang et al. 2015, eq. 9).

    Two candidates: z >= 0 gives z = max((relu(y) + lam target) / (1 + lam), 0); z < 0 gives
    z = min(target, 0). The one with the lower cost is taken.
    """
    r = torch.relu(y)
    positive = torch.clamp((r + lam * target) / (1 + lam), min=0)
    negative = torch.clamp(target, max=0)

    def cost(z: torch.Tensor) -> torch.Tensor:
        return (r - torch.relu(z)) ** 2 + lam * (z - target) ** 2

    return torch.where(cost(positive) <= cost(negative), positive, negative)


NL2A_SCHEDULE = ((0.01, 25), (1.0, 25))  # (lambda, iterations): Zhang et al. 2015


def lambda_steps(schedule) -> tuple[float, ...]:
    """[(lambda, iterations), ...] -> one lambda per iteration."""
    return tuple(float(value) for value, steps in schedule for _ in range(int(steps)))


def nl2a(Y: torch.Tensor, Y_hat: torch.Tensor, rank: int, lambdas: tuple[float, ...] = lambda_steps(NL2A_SCHEDULE)
         ) -> LowRankMap:
    """Nonlinear asymmetric approximation with ReLU (Zhang et al. 2015, the thesis's NL2A [12]).

    min ||relu(Y) - relu(M Y_hat + b)||_F^2 s.t. rank(M) <= m, relaxed with auxiliary Z:
    ||relu(Y) - relu(Z)||^2 + lam ||Z - (M Y_hat + b)||^2, alternating the element-wise Z-step
    (`relu_target`) and an L2 reduced-rank regression of Z on Y_hat for (M, b). One iteration per
    entry of `lambdas` (the paper's schedule: 25 iterations at lam = 0.01, then 25 at lam = 1);
    starts from the linear L2 solution. `residuals` records ||relu(Y) - relu(M Y_hat + b)|| /
    ||relu(Y)|| per iteration.
    """
    check_rank(rank, Y)
    current = l2_lowrank(Y, Y_hat, rank)
    relu_norm = torch.linalg.norm(torch.relu(Y)).clamp_min(torch.finfo(Y.dtype).tiny)
    residuals = []
    for lam in lambdas:
        Z = relu_target(Y, current.apply(Y_hat), lam)
        current = l2_lowrank(Z, Y_hat, rank)
        residuals.append(float(torch.linalg.norm(torch.relu(Y) - torch.relu(current.apply(Y_hat))) / relu_norm))
    current.residuals = residuals
    return current
