"""Backward Pass Differentiable Approximation (Athalye et al. 2018, section 4.1) and EOT (section 4.3).

`bpda(defense, x)` returns the real defense's output in the forward pass, and in the backward pass
the gradient of a surrogate g: the identity (`mode="identity"`, g(x) = x, the papers' BPDA) or the
defense's own differentiable `Defense.surrogate` (`mode="surrogate"`). The value is exact:
`g(x) - g(x).detach() + defense(x)` equals `defense(x)` bit for bit, and its gradient is g's.

A random defense's surrogate sees the same draws as its forward pass (the same mask, anchors or
deflections): the generator's state is saved before the forward, restored for the surrogate, and
set to the state after the forward again, so the next draw is the same as without a surrogate.

A chain of defenses is approximated step by step: each step's surrogate is evaluated at that
step's real input (the previous step's real output), not at the attacker's image.

EOT (expectation over transformation): a random defense is drawn `eot_samples` times per forward
pass and the logits are averaged, so the gradient the attack sees is the mean of the per-draw
gradients (the gradient is linear in the logits). The draws are one batch: the B images are
repeated `eot_samples` times and defended in a single `B x eot_samples` defense call. The classifier
then sees one draw (B images) at a time, and under gradient each draw is a checkpointed segment
(`torch.utils.checkpoint`): only its input is kept and its activations are recomputed in the
backward pass, so an EOT gradient holds the activations of one draw, not of `eot_samples` (on
CIFAR-10 with EOT 20 and 256 images the full graph outgrows a 24 GiB machine). `HighestLossIterate`
keeps, per example, the iterate of highest cross-entropy loss that the attack evaluated inside its
eps ball.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from defense_cli.classifier_evaluations import draws_per_call
from defense_cli.defenses.base import Defense
from defense_cli.defenses.random_masks import generator_for

BPDA_MODES = ("identity", "surrogate")
#: slack when testing whether an iterate lies in the eps ball (float rounding of the projection)
BALL_TOLERANCE = 1e-5


def defense_steps(defense: Defense) -> list[Defense]:
    """The defenses applied in order: a chain's steps (nested chains flattened), or the defense."""
    if not defense.steps:
        return [defense]
    return [leaf for step in defense.steps for leaf in defense_steps(step)]


def _bpda_step(step: Defense, images: torch.Tensor, generator: torch.Generator | None, mode: str) -> torch.Tensor:
    if mode == "surrogate" and step.randomized and images.requires_grad:
        generator = generator_for(images, generator)
        before = generator.get_state()
    defended = step(images.detach().clamp(0, 1), generator=generator)
    if not images.requires_grad:
        return defended
    if mode != "surrogate":
        return images - images.detach() + defended
    if step.randomized:   # replay the forward's draws (mask, anchors) for the surrogate, then move on
        after = generator.get_state()
        generator.set_state(before)
        approx = step.surrogate(images, generator)
        generator.set_state(after)
    else:
        approx = step.surrogate(images, generator)
    return approx - approx.detach() + defended


def bpda(defense: Defense, images: torch.Tensor, generator: torch.Generator | None = None,
         mode: str = "identity") -> torch.Tensor:
    """defense(images) forward; gradient of the surrogate (identity or `Defense.surrogate`) backward."""
    if mode not in BPDA_MODES:
        raise ValueError(f"bpda mode={mode!r} is not allowed; use one of {', '.join(BPDA_MODES)}")
    out = images
    for step in defense_steps(defense):
        out = _bpda_step(step, out, generator, mode)
    return out


class DefendedClassifier(nn.Module):
    """classifier(defense(x)) with BPDA gradients through the defense: the white-box target.

    With `eot_samples > 1` the defense is drawn that many times per call and the logits averaged
    (EOT); use it only for random defenses, a deterministic one gives the same draw every time.
    """

    def __init__(self, classifier: nn.Module, defense: Defense, generator: torch.Generator | None = None,
                 bpda_mode: str = "identity", eot_samples: int = 1) -> None:
        super().__init__()
        if bpda_mode not in BPDA_MODES:
            raise ValueError(f"bpda={bpda_mode!r} is not allowed; use one of {', '.join(BPDA_MODES)}")
        if not (isinstance(eot_samples, int) and eot_samples >= 1):
            raise ValueError(f"eot_samples={eot_samples!r} must be an integer >= 1")
        self.classifier = classifier
        self.defense = defense
        self.generator = generator
        self.bpda_mode = bpda_mode
        self.eot_samples = eot_samples

    @property
    def draws_per_call(self) -> int:
        """Classifier evaluations per image of one forward pass (the EOT samples)."""
        return self.eot_samples

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        repeated = images.repeat(self.eot_samples, *([1] * (images.dim() - 1)))
        draws = bpda(self.defense, repeated, self.generator, self.bpda_mode).chunk(self.eot_samples)
        return torch.stack([self._classify(draw) for draw in draws]).mean(0)

    def _classify(self, draw: torch.Tensor) -> torch.Tensor:
        """The classifier's logits for one draw; a checkpointed segment when an EOT gradient is taken."""
        if self.eot_samples > 1 and torch.is_grad_enabled() and draw.requires_grad:
            return checkpoint(self.classifier, draw, use_reentrant=False)
        return self.classifier(draw)


class HighestLossIterate(nn.Module):
    """Passes calls through to `model` and remembers, per example, the input of highest loss.

    Every batch the attack evaluates (its iterates, with or without gradient) is scored with the
    cross-entropy of `model`'s logits (the EOT estimate when `model` averages draws); inputs outside
    the eps ball of `norm` around `clean`, or outside [0, 1], are ignored, so the kept image is
    always a valid adversarial example. Only batches of the clean batch's shape are considered.
    """

    def __init__(self, model: nn.Module, clean: torch.Tensor, labels: torch.Tensor, norm: str,
                 eps: float | None) -> None:
        super().__init__()
        self.model = model
        self.clean, self.labels, self.norm = clean.detach(), labels, norm
        self.eps = float("inf") if eps is None else float(eps)
        self.best = clean.detach().clone()
        self.best_loss = torch.full((len(labels),), -float("inf"), device=clean.device)

    @property
    def draws_per_call(self) -> int:
        return draws_per_call(self.model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        if images.shape == self.clean.shape:
            self._record(images.detach(), logits.detach())
        return logits

    def _record(self, images: torch.Tensor, logits: torch.Tensor) -> None:
        loss = F.cross_entropy(logits.float(), self.labels, reduction="none")
        delta = (images - self.clean).flatten(1)
        size = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        inside = (size <= self.eps + BALL_TOLERANCE) & (images.flatten(1).amin(1) >= 0) & (images.flatten(1).amax(1) <= 1)
        better = inside & (loss > self.best_loss)
        self.best[better] = images[better]
        self.best_loss[better] = loss[better]

    def select(self, final: torch.Tensor) -> torch.Tensor:
        """The attack's `final` output scored too, then each example's highest-loss image."""
        with torch.no_grad():
            self(final)
        return self.best.clone()
