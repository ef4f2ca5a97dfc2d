"""The indicators of attack failure of Pintor et al. 2022 ("Indicators of attack failure: debugging
and improving optimization of adversarial examples", NeurIPS, sec. 3, Table 1), as per-example
tensors, plus AutoAttack's randomness check (Croce and Hein 2020, the `checks.py` of their code).

Each function scores a batch; `defense_cli.validity` turns the scores into metrics, tags and flags.

1. unavailable gradients: the gradient of the attack loss is all zero (or not finite) for a sample;
2. unstable predictions: mean over draws of uniform noise delta in [-r/2, r/2] of
   |L(x) - L(x + delta)| / |L(x)|, capped at 1, at the clean point;
3. silent success: an iterate was adversarial but the returned point is not;
4. incomplete optimisation: the loss trace, scaled to [0, 1] and replaced by its running best,
   still moves by more than a tolerance over the last min(10, T) steps;
5. transfer failure: an example that fools the surrogate does not fool the target;
6. unconstrained attack failure: with eps unbounded, a clean-correct point is not flipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from defense_cli.classifier_evaluations import draws_per_call

#: last steps over which the normalised running-best loss must have settled (indicator 4)
LAST_STEPS = 10


def _loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images).float(), labels, reduction="none")


def unavailable_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) True where d loss / d x is all zero or not finite, or where the backward pass fails."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        try:
            grad, = torch.autograd.grad(_loss(model, x, labels).sum(), x, allow_unused=True)
        except RuntimeError:
            return torch.ones(len(labels), dtype=torch.bool, device=images.device)
    if grad is None:
        return torch.ones(len(labels), dtype=torch.bool, device=images.device)
    flat = grad.flatten(1)
    return (flat == 0).all(1) | ~torch.isfinite(flat).all(1)


@torch.no_grad()
def unstable_predictions(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, radius: float,
                         evaluations: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) min(1, mean over noise draws of |L(x) - L(x + delta)| / |L(x)|), delta uniform in
    [-radius/2, radius/2] (|L(x)| = 0 divides by 1, as in the authors' code). The noise draws are
    `evaluations` classifier evaluations per image: `evaluations / k` draws when each call of
    `model` averages k EOT samples (`model.draws_per_call`), each loss then an EOT mean, so the probe
    costs the same for a random defense; the draws of a batch are one model call."""
    draws = max(1, evaluations // draws_per_call(model))
    clean_loss = _loss(model, images, labels)
    repeated = images.repeat(draws, *([1] * (images.dim() - 1)))
    noise = torch.rand(repeated.shape, generator=generator, device=images.device, dtype=images.dtype)
    noisy = (repeated + radius * (noise - 0.5)).clamp(0, 1)
    noisy_loss = _loss(model, noisy, labels.repeat(draws)).view(draws, len(labels))
    reference = torch.where(clean_loss == 0, torch.ones_like(clean_loss), clean_loss.abs())
    return ((clean_loss - noisy_loss).abs() / reference).mean(0).clamp(max=1)


def incomplete_optimisation(losses: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(B,) from a (T, B) trace of the loss the attack maximises: scaled to [0, 1] per example and
    replaced by its running best, it moves by more than `tolerance` over its last min(10, T) values
    (the attack had not settled). A flat trace (max = min) counts as settled."""
    if losses.shape[0] == 0:
        return torch.zeros(losses.shape[1], dtype=torch.bool, device=losses.device)
    low, high = losses.amin(0), losses.amax(0)
    scaled = (losses - low) / (high - low).clamp_min(1e-12)
    best = scaled.cummax(0).values[-min(LAST_STEPS, losses.shape[0]):]
    return best[-1] - best[0] > tolerance


@torch.no_grad()
def randomness_detected(model: nn.Module, images: torch.Tensor, passes: int = 5) -> torch.Tensor:
    """(B,) True where `passes` forward passes of the same images give different logits."""
    first = model(images)
    changed = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    for _ in range(passes - 1):
        changed |= ~torch.isclose(model(images), first, rtol=1e-5, atol=1e-6).all(1)
    return changed
