"""Auto-PGD (Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", sec. 3, Algorithm 1): APGD-CE and APGD-T, batched in torch.

Algorithm 1: start at a random point of the eps sphere, step size eta = 2 eps, momentum
alpha = 0.75 (eq. 2: z = P(x_k + eta sign(grad)), x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)
(x_k - x_{k-1})); alpha = 1 on the first step). At checkpoints w_j = ceil(p_j N), p_0 = 0,
p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), an image's step size halves and its
iterate restarts from its best point when (condition 1) the loss rose in fewer than rho = 0.75 of
the steps since the last checkpoint, or (condition 2) its step size was not reduced at the last
checkpoint and its best loss has not improved since. Losses: cross-entropy ("ce"), the
difference-of-logits ratio DLR (eq. 3, "dlr") and its targeted version (eq. 4) for APGD-T, which
runs once per target class among the `target_classes` most likely wrong classes (sec. 4: 9).
L2 steps use the gradient divided by its L2 norm (the authors' L2 variant). An image's result is
the first iterate that fools the model, else its highest-loss iterate (choice: the most damaging
point for a transfer to a defended model; the authors' code returns the start there).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from defense_cli.attacks.base import Attack
from defense_cli.attacks.base import eps_text
from defense_cli.parameter_checks import check_choice, check_eps, check_norm, check_positive_int
from defense_cli.attacks.projection import l2_norms, project, random_start

APGD_LOSSES = ("ce", "dlr")
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # logits, labels -> (B,) to maximise


def checkpoints(steps: int) -> list[int]:
    """Iterations w_j at which the step size may halve (Croce and Hein 2020, sec. 3.2)."""
    previous, current, points = 0.0, 0.22, []
    while current <= 1:
        points.append(math.ceil(round(current * steps, 6)))   # round: 0.22 + 0.19 must give 41, not 42
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return sorted(set(p for p in points if 0 < p <= steps))


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. (3): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12); needs >= 3 classes."""
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return -(true - others) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(target: torch.Tensor) -> Loss:
    """Eq. (4): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12); needs >= 4 classes."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ordered = logits.sort(dim=1, descending=True).values
        true = logits.gather(1, labels[:, None]).squeeze(1)
        aimed = logits.gather(1, target[:, None]).squeeze(1)
        return -(true - aimed) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)

    return loss


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels, reduction="none")


class APGD(Attack):
    """APGD with cross-entropy (APGD-CE, the default) or untargeted DLR loss (APGD-DLR)."""

    def __init__(self, eps: float = 8 / 255, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, momentum: float = 0.75) -> None:
        self.eps, self.norm = check_eps(eps), check_norm(norm)
        self.steps, self.restarts = check_positive_int("steps", steps), check_positive_int("restarts", restarts)
        self.loss = check_choice("loss", loss, APGD_LOSSES)
        for name, value in (("rho", rho), ("momentum", momentum)):
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ValueError(f"{name}={value!r} must be a number in (0, 1]")
        self.rho, self.momentum = float(rho), float(momentum)

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
        loss = cross_entropy if self.loss == "ce" else dlr_loss
        return self._restarts(model, images, labels, generator, lambda _: loss)

    def _restarts(self, model, images, labels, generator, loss_for: Callable[[torch.Tensor], Loss]) -> torch.Tensor:
        """Run up to `restarts` times on the images not yet fooled; `loss_for(indices)` builds the loss."""
        result = images.clone()
        pending = torch.arange(images.shape[0], device=images.device)
        for _ in range(self.restarts):
            adversarial, fooled = self._run(model, images[pending], labels[pending], generator, loss_for(pending))
            result[pending] = adversarial
            pending = pending[~fooled]
            if pending.numel() == 0:
                break
        return result

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator | None, loss_fn: Loss) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 1 on one batch: (first fooling or highest-loss iterate, fooled mask)."""
        x = random_start(images, self.eps, self.norm, generator)
        state = _SearchState(x, *self._loss_and_grad(model, x, labels, loss_fn), step=2 * self.eps)
        previous, points = x, set(checkpoints(self.steps))
        for k in range(1, self.steps + 1):
            alpha = 1.0 if k == 1 else self.momentum
            z = project(x + state.step * self._direction(state.grad), images, self.eps, self.norm)
            x, previous = project(x + alpha * (z - x) + (1 - alpha) * (x - previous), images, self.eps, self.norm), x
            state.record(x, *self._loss_and_grad(model, x, labels, loss_fn))
            if k in points:
                x = state.checkpoint(x, k, self.rho)
        return state.result(), state.fooled

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return grad.sign()
        return grad / l2_norms(grad).clamp_min(1e-12)

    @staticmethod
    def _loss_and_grad(model, x, labels, loss_fn):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            loss = loss_fn(logits, labels)
            grad, = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad.detach(), logits.detach().argmax(1) != labels

    def describe(self) -> str:
        return (f"APGD-{self.loss.upper()}(norm={self.norm}, eps={eps_text(self.eps)}, steps={self.steps}, "
                f"restarts={self.restarts}, rho={self.rho:.3g}, momentum={self.momentum:.3g})")


class APGDTargeted(APGD):
    """APGD-T: APGD with the targeted DLR loss, once per target among the `target_classes` classes
    the model ranks highest after the true one (at the clean image), on the images not yet fooled."""

    def __init__(self, eps: float = 8 / 255, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 target_classes: int = 9, rho: float = 0.75, momentum: float = 0.75) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, restarts=restarts, loss="dlr", rho=rho, momentum=momentum)
        self.target_classes = check_positive_int("target_classes", target_classes)

    def perturb(self, model, images, labels, generator):  # noqa: D102 - see class docstring
        with torch.no_grad():
            logits = model(images)
        if logits.shape[1] < 4:
            raise ValueError(f"APGD-T's targeted DLR loss needs >= 4 classes, the model has {logits.shape[1]}")
        ranked = logits.scatter(1, labels[:, None], float("-inf")).argsort(dim=1, descending=True)
        result = images.clone()
        pending = torch.arange(images.shape[0], device=images.device)
        for rank in range(min(self.target_classes, logits.shape[1] - 1)):
            targets = ranked[pending, rank]
            adversarial = self._restarts(model, images[pending], labels[pending], generator,
                                         lambda subset, t=targets: targeted_dlr_loss(t[subset]))
            result[pending] = adversarial
            with torch.no_grad():
                pending = pending[model(adversarial).argmax(1) == labels[pending]]
            if pending.numel() == 0:
                break
        return result

    def describe(self) -> str:
        return (f"APGD-T(norm={self.norm}, eps={eps_text(self.eps)}, steps={self.steps}, "
                f"restarts={self.restarts}, target_classes={self.target_classes}, rho={self.rho:.3g})")


class _SearchState:
    """Per-image bookkeeping of Algorithm 1: step sizes, best loss and point, first fooling point."""

    def __init__(self, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor, fooled: torch.Tensor,
                 step: float) -> None:
        self.step = torch.full_like(loss, step).view(-1, *([1] * (x.dim() - 1)))
        self.loss, self.grad, self.fooled, self.found = loss, grad, fooled, x.clone()
        self.best_loss, self.best_x, self.best_grad = loss.clone(), x.clone(), grad.clone()
        self.increases = torch.zeros_like(loss)
        self.last_check, self.checked_loss = 0, loss.clone()
        self.reduced_last = torch.zeros_like(fooled)

    def record(self, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor, fooled: torch.Tensor) -> None:
        fresh = fooled & ~self.fooled
        self.found[fresh] = x[fresh]
        self.fooled = self.fooled | fooled
        self.increases += (loss > self.loss).float()
        better = loss > self.best_loss
        self.best_loss = torch.where(better, loss, self.best_loss)
        self.best_x[better], self.best_grad[better] = x[better], grad[better]
        self.loss, self.grad = loss, grad

    def checkpoint(self, x: torch.Tensor, k: int, rho: float) -> torch.Tensor:
        """Halve the step and go back to the best point where conditions 1 or 2 hold; the iterate."""
        stalled = self.increases < rho * (k - self.last_check)                  # condition 1
        stalled |= ~self.reduced_last & (self.best_loss <= self.checked_loss)     # condition 2
        self.step[stalled] /= 2
        x = torch.where(stalled.view_as(self.step), self.best_x, x)
        self.grad = torch.where(stalled.view_as(self.step), self.best_grad, self.grad)
        self.reduced_last, self.checked_loss, self.last_check = stalled, self.best_loss.clone(), k
        self.increases.zero_()
        return x

    def result(self) -> torch.Tensor:
        return torch.where(self.fooled.view_as(self.step), self.found, self.best_x)
