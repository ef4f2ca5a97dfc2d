"""SPSA score-based attack (Uesato et al. 2018, "Adversarial Risk and the Dangers of Evaluating
Against Weak Attacks", sec. 3.2 / Algorithm 1), batched in torch.

Per step, the gradient of the margin loss f(x) = Z_y(x) - max_{j != y} Z_j(x) is estimated from
queries only: g = mean_i (f(x + delta v_i) - f(x - delta v_i)) / (2 delta) * v_i with Rademacher
v_i; Adam (learning rate `learning_rate`) descends f and each iterate is projected onto the Linf
eps ball and [0, 1]. An image is done (and kept) at the first iterate the model misclassifies; the
attack stops once every image is done. `003_...` sec. 3.1 uses 2048 samples per step and leaves the
rest at Uesato et al.'s values (delta 0.01, learning rate 0.01). The step count is not given there:
choice, 100 steps (config `steps`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from defense_cli.attacks.base import Attack
from defense_cli.attacks.base import eps_text
from defense_cli.parameter_checks import check_eps, check_norm, check_positive, check_positive_int
from defense_cli.attacks.projection import draw, project

LossFn = Callable[[torch.Tensor], torch.Tensor]   # (B, ...) images -> (B,) losses


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Z_y - max_{j != y} Z_j per image: negative once the image is misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return true - others


def spsa_gradient(loss_fn: LossFn, images: torch.Tensor, delta: float, samples: int, chunk: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    """SPSA estimate of d loss / d images per image, from 2 * samples queries per image.

    Samples are evaluated `chunk` at a time (each query batch holds 2 * chunk * B images).
    """
    estimate = torch.zeros_like(images)
    batch = images.shape[0]
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        signs = draw((count, *images.shape), images.device, generator, "rademacher")
        probes = torch.cat([images + delta * signs, images - delta * signs]).flatten(0, 1)
        losses = loss_fn(probes).view(2, count, batch)
        slopes = (losses[0] - losses[1]) / (2 * delta)
        estimate += (slopes.view(count, batch, *([1] * (images.dim() - 1))) * signs).sum(0)
    return estimate / samples


class SPSA(Attack):
    """Score-based SPSA attack; queries the model's logits, never its gradients."""

    uses_gradients = False

    def __init__(self, eps: float = 8 / 255, norm: str = "linf", steps: int = 100, samples: int = 2048,
                 delta: float = 0.01, learning_rate: float = 0.01, samples_per_query: int = 128) -> None:
        self.eps, self.norm = check_eps(eps), check_norm(norm, ("linf",))
        self.steps, self.samples = check_positive_int("steps", steps), check_positive_int("samples", samples)
        self.delta = check_positive("delta", delta)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.samples_per_query = check_positive_int("samples_per_query", samples_per_query)

    @torch.no_grad()
    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
        result = images.clone()
        pending = torch.arange(images.shape[0], device=images.device)
        current = images.clone()
        adam = _Adam(current, self.learning_rate)
        for _ in range(self.steps):
            fooled = model(current).argmax(1) != labels[pending]
            result[pending[fooled]] = current[fooled]
            keep = ~fooled
            pending, current, adam = pending[keep], current[keep], adam.select(keep)
            if pending.numel() == 0:
                break
            origin, targets = images[pending], labels[pending]
            gradient = spsa_gradient(lambda x: margin_loss(model(x), targets.repeat(x.shape[0] // targets.shape[0])),
                                     current, self.delta, self.samples, self.samples_per_query, generator)
            current = project(current - adam.step(gradient), origin, self.eps, self.norm)
        result[pending] = current
        return result

    def describe(self) -> str:
        return (f"SPSA(norm=linf, eps={eps_text(self.eps)}, steps={self.steps}, samples={self.samples}, "
                f"delta={self.delta:.4g}, learning_rate={self.learning_rate:.4g})")


class _Adam:
    """Adam's update (Kingma and Ba 2015) on a batch, rows selectable as images finish."""

    def __init__(self, like: torch.Tensor, learning_rate: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.first, self.second = torch.zeros_like(like), torch.zeros_like(like)
        self.learning_rate, self.betas, self.eps, self.t = learning_rate, betas, eps, 0

    def select(self, keep: torch.Tensor) -> "_Adam":
        self.first, self.second = self.first[keep], self.second[keep]
        return self

    def step(self, gradient: torch.Tensor) -> torch.Tensor:
        """The displacement to subtract from the iterate."""
        self.t += 1
        beta1, beta2 = self.betas
        self.first.mul_(beta1).add_(gradient, alpha=1 - beta1)
        self.second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        first = self.first / (1 - beta1 ** self.t)
        second = self.second / (1 - beta2 ** self.t)
        return self.learning_rate * first / (second.sqrt() + self.eps)
