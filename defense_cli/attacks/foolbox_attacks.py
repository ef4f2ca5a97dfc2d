"""Gradient attacks through foolbox 3 with a fixed eps ball: FGSM, BIM and PGD (Linf and L2),
and the shared foolbox adapters.

foolbox draws its random starts from torch's global RNG; each call forks that RNG and seeds it from
the caller's generator, so attacks repeat under a seed without disturbing other code. The other
foolbox adapters (minimisation and decision-based attacks) build on `FoolboxMinimizationAttack`.
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import contextmanager
from typing import Iterator

import eagerpy as ep
import foolbox as fb
import torch
from torch import nn

from defense_cli.attacks.base import Attack, eps_text, seeded_rng
from defense_cli.parameter_checks import (check_choice, check_eps, check_nonnegative, check_norm, check_positive,
                                         check_positive_int)

PGD_LOSSES = ("ce", "nl2")


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters without requires_grad for the duration: foolbox (through eagerpy) calls
    `loss.backward()`, which would otherwise compute every weight gradient (a third of the backward
    pass, wasted) and accumulate it into `param.grad` (polluting a training step around the attack)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


class FoolboxAttack(Attack):
    """Runs a foolbox attack at one epsilon with the misclassification criterion."""

    @abstractmethod
    def _foolbox_attack(self) -> fb.attacks.base.Attack:
        """The configured foolbox attack object."""

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
        fmodel = fb.PyTorchModel(model.eval(), bounds=(0, 1), device=images.device)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), frozen_parameters(model):
            torch.manual_seed(seeded_rng(generator))
            return self._attack(fmodel, images, labels).clamp(0, 1)

    def _attack(self, fmodel: fb.PyTorchModel, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, clipped, _ = self._foolbox_attack()(fmodel, images, labels, epsilons=self.eps)
        return clipped


class FoolboxMinimizationAttack(FoolboxAttack):
    """A foolbox attack that minimises its perturbation (CW, DeepFool, decision-based attacks).

    `self.eps = None` passes `epsilons=None`: foolbox then returns the raw, unclipped result; a
    number clips the perturbation to that eps ball. Images the attack did not fool (after clipping)
    come back clean: foolbox's CW, for one, returns an all-zero image where it found nothing, which
    is no perturbation anyone should report.
    """

    def _attack(self, fmodel, images, labels, **kwargs):
        _, clipped, success = self._foolbox_attack()(fmodel, images, labels, epsilons=self.eps, **kwargs)
        return torch.where(success.view(-1, *([1] * (images.dim() - 1))), clipped, images)


class FGSM(FoolboxAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): x + eps * sign(grad), one step.

    `000_...` ch. 3, eq. (3.1).
    """

    def __init__(self, eps: float = 0.1, norm: str = "linf", random_start: bool = False) -> None:
        self.eps, self.norm, self.random_start = check_eps(eps), check_norm(norm), bool(random_start)

    def _foolbox_attack(self):
        if self.norm == "l2":
            return fb.attacks.L2FastGradientAttack(random_start=self.random_start)
        return fb.attacks.LinfFastGradientAttack(random_start=self.random_start)

    def describe(self) -> str:
        return f"FGSM(norm={self.norm}, eps={eps_text(self.eps)}, steps=1, random_start={self.random_start})"


class _NL2Loss:
    """Mixin for foolbox's gradient-descent attacks: the "normalized L2" (NL2) loss.

    `000_...` ch. 3 (sec. 3.5.1, Tables 3.3 and 3.6) evaluates "BPDA with NL2" with the code of
    Athalye et al. 2018 [28] and does not write the loss down. Choice (from that code's input-
    transformation attack): cross-entropy minus `weight * max(||x' - x||_2^2 / ||x||_2^2 - threshold, 0)`,
    maximised per image, i.e. the attack is penalised once its normalised squared L2 distortion
    exceeds `threshold`. Both constants are config values (`nl2_weight`, `nl2_threshold`).
    """

    def __init__(self, *args, weight: float, threshold: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weight, self.threshold = weight, threshold
        self._origin: torch.Tensor | None = None

    def run(self, model, inputs, criterion, *, epsilon, **kwargs):
        self._origin = ep.astensor(inputs).raw.detach()
        return super().run(model, inputs, criterion, epsilon=epsilon, **kwargs)

    def get_loss_fn(self, model, labels):
        origin = self._origin
        energy = origin.flatten(1).pow(2).sum(1).clamp_min(1e-12)

        def loss_fn(inputs: ep.Tensor) -> ep.Tensor:
            logits = model(inputs).raw
            ce = nn.functional.cross_entropy(logits, labels.raw, reduction="none")
            distortion = (inputs.raw - origin).flatten(1).pow(2).sum(1) / energy
            penalty = (distortion - self.threshold).clamp_min(0)
            return ep.astensor((ce - self.weight * penalty).sum())

        return loss_fn


class _LinfNL2PGD(_NL2Loss, fb.attacks.LinfPGD):
    pass


class _L2NL2PGD(_NL2Loss, fb.attacks.L2PGD):
    pass


class PGD(FoolboxAttack):
    """Projected gradient descent (Madry et al. 2018) with an explicit step size and restarts.

    Restarts re-run the attack from new random starts on the images not yet fooled and keep the
    first adversarial example found for each image. `loss="nl2"` uses the NL2 loss of `_NL2Loss`
    ("BPDA with NL2", `000_...` ch. 3); `loss="ce"` the cross-entropy.
    """

    def __init__(self, eps: float = 0.1, steps: int = 20, step_size: float = 0.01, norm: str = "linf",
                 random_start: bool = True, restarts: int = 1, loss: str = "ce",
                 nl2_weight: float = 1.0, nl2_threshold: float = 0.05) -> None:
        self.eps, self.norm = check_eps(eps), check_norm(norm)
        self.steps, self.step_size = check_positive_int("steps", steps), check_positive("step_size", step_size)
        self.restarts, self.random_start = check_positive_int("restarts", restarts), bool(random_start)
        self.loss = check_choice("loss", loss, PGD_LOSSES)
        self.nl2_weight = check_nonnegative("nl2_weight", nl2_weight)
        self.nl2_threshold = check_nonnegative("nl2_threshold", nl2_threshold)

    def _foolbox_attack(self):
        arguments = dict(abs_stepsize=self.step_size, steps=self.steps, random_start=self.random_start)
        if self.loss == "nl2":
            kind = _L2NL2PGD if self.norm == "l2" else _LinfNL2PGD
            return kind(weight=self.nl2_weight, threshold=self.nl2_threshold, **arguments)
        kind = fb.attacks.L2PGD if self.norm == "l2" else fb.attacks.LinfPGD
        return kind(**arguments)

    def perturb(self, model, images, labels, generator):  # noqa: D102 - see class docstring
        adversarial = super().perturb(model, images, labels, generator)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                pending = model(adversarial).argmax(1) == labels
            if not pending.any():
                break
            retry = super().perturb(model, images[pending], labels[pending], generator)
            adversarial[pending] = retry
        return adversarial

    def describe(self) -> str:
        loss = "" if self.loss == "ce" else (f", loss=nl2(weight={self.nl2_weight:.4g}, "
                                             f"threshold={self.nl2_threshold:.4g})")
        return (f"{type(self).__name__}(norm={self.norm}, eps={eps_text(self.eps)}, steps={self.steps}, "
                f"step_size={self.step_size:.4g}, restarts={self.restarts}, "
                f"random_start={self.random_start}{loss})")


class BIM(PGD):
    """Basic iterative method (Kurakin et al. 2017; `000_...` ch. 3, eq. (3.2)): PGD from the clean
    image (no random start, no restarts), each step projected onto the eps ball and [0, 1]."""

    def __init__(self, eps: float = 8 / 255, steps: int = 10, step_size: float = 2 / 255,
                 norm: str = "linf") -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=False, restarts=1)


class BPDAPGD(PGD):
    """BPDA-PGD (Athalye et al. 2018, section 4.1, with Madry et al.'s PGD): PGD whose gradients
    pass through the defense by BPDA. The BPDA itself is done by the white-box threat model
    (`WhiteBox.target`); this class is PGD that refuses any other threat model, so that
    `attack=bpda` never names a run that did not differentiate through the defense."""

    white_box_only = True
