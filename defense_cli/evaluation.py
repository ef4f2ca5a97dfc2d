"""Attack and defend a test set in batches, keeping every prediction the metrics need."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from defense_cli.attacks.checkpoint import SuiteCheckpoints
from defense_cli.attacks.suite import AttackSuite
from defense_cli.attacks.threat_models import ThreatModel
from defense_cli.data import ImageSet
from defense_cli.defenses import Defense
from defense_cli.progress import progress


@dataclass
class Evaluation:
    """Predictions of the bare classifier on clean, defended-clean, adversarial and
    defended-adversarial images, the suite's per-example outcome, perturbations, costs and a few
    samples for the grid."""

    labels: list[torch.Tensor] = field(default_factory=list)
    clean: list[torch.Tensor] = field(default_factory=list)
    defended_clean: list[torch.Tensor] = field(default_factory=list)
    adversarial: list[torch.Tensor] = field(default_factory=list)
    defended_adversarial: list[torch.Tensor] = field(default_factory=list)
    draws: list[torch.Tensor] = field(default_factory=list)   # (n_draws, B) per batch, random defenses
    robust: list[torch.Tensor] = field(default_factory=list)  # robust under every attack and every draw
    broken_by: list[torch.Tensor] = field(default_factory=list)
    robust_under: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    iterate_fooled: list[torch.Tensor] = field(default_factory=list)
    incomplete: list[torch.Tensor] = field(default_factory=list)
    surrogate_fooled: list[torch.Tensor] = field(default_factory=list)
    target_robust: list[torch.Tensor] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    cascade: bool = True
    l2: list[torch.Tensor] = field(default_factory=list)
    linf: list[torch.Tensor] = field(default_factory=list)
    psnr: list[torch.Tensor] = field(default_factory=list)
    ssim: list[torch.Tensor] = field(default_factory=list)
    attack_seconds: float = 0.0
    defense_seconds: float = 0.0
    defended_images: int = 0   # images the timed defense calls defended (the draws and votes included)
    gradient_evaluations: int = 0
    queries: int = 0
    resumed_attacks: int = 0   # (batch, attack) pairs restored from a checkpoint of a killed run
    samples: dict[str, torch.Tensor] = field(default_factory=dict)

    def cat(self, name: str) -> torch.Tensor:
        parts = getattr(self, name)
        return torch.cat(parts) if parts else torch.empty(0)


@torch.no_grad()
def _predict(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return classifier(images).argmax(1).cpu()


def _predict_defended(classifier: nn.Module, defense: Defense, images: torch.Tensor,
                      defended: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Prediction on `defended` (defended here when None), or the majority vote over
    `defense.votes` fresh runs (Ens-10)."""
    votes = defense.votes
    if votes > 1:
        from defense_cli.defenses.ensemble import majority_vote

        return majority_vote(classifier, defense, images, votes, generator).cpu()
    return _predict(classifier, defense(images, generator) if defended is None else defended)


def draw_predictions(classifier: nn.Module, defense: Defense, images: torch.Tensor, n_draws: int,
                     generator: torch.Generator | None) -> torch.Tensor:
    """(n_draws, B) predictions under independent draws of the defense; the draws of a defense
    without votes are one batch of n_draws x B images (one defense call). A deterministic defense
    is drawn once."""
    n = n_draws if defense.randomized else 1
    if defense.votes > 1:
        return torch.stack([_predict_defended(classifier, defense, images, None, generator) for _ in range(n)])
    repeated = images.repeat(n, *([1] * (images.dim() - 1)))
    return _predict(classifier, defense(repeated, generator)).view(n, images.shape[0])


def robust_judge(classifier: nn.Module, defense: Defense, n_draws: int, generator: torch.Generator | None):
    """The suite's judge: True where the defended classifier is right under every one of n_draws draws."""

    def judge(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (draw_predictions(classifier, defense, images, n_draws, generator) == labels.cpu()).all(0).to(labels.device)

    return judge


def evaluate(classifier: nn.Module, defense: Defense, suite: AttackSuite, threat_model: ThreatModel,
             test: ImageSet, batch_size: int, device: torch.device, generator: torch.Generator, grid_size: int = 8,
             source_model: Callable[[], nn.Module] | None = None,
             checkpoints: SuiteCheckpoints | None = None) -> Evaluation:
    """Run the suite under `threat_model` (each attack against the model the threat model gives it)
    and the defense (in front of `classifier`) over `test`. With `checkpoints`, each batch's suite
    is checkpointed after every attack and resumed from a checkpoint left by a killed run.

    A point is robust when the suite did not break it under any of `threat_model.n_draws` draws of
    a random defense, nor do that many fresh draws of the defense applied to its final adversarial
    image (kept in `draws`; the first is `defended_adversarial`).
    """
    from defense_cli.image_quality import psnr, ssim
    from defense_cli.metrics import perturbation_norms

    entries, n_draws = suite.plan(threat_model, defense), threat_model.n_draws
    targets = {entry.name: entry.threat_model.target(entry.attack, classifier, defense, source_model, generator)
               for entry in entries}
    result = Evaluation(entries=[entry.name for entry in entries], cascade=suite.cascade,
                        robust_under={entry.name: [] for entry in entries})
    classifier.eval()
    judge = robust_judge(classifier, defense, n_draws, generator)
    batches = test.batches(batch_size, device=device)
    for index, (images, labels) in enumerate(progress(batches, -(-len(test) // batch_size), "attack + defend")):
        start = time.perf_counter()
        defended = defense(images, generator)
        result.defense_seconds += time.perf_counter() - start
        result.defended_images += images.shape[0]
        start = time.perf_counter()
        checkpoint = None if checkpoints is None else checkpoints.for_batch(index, result.entries, images, labels)
        outcome = suite.run(entries, lambda entry: targets[entry.name], images, labels, judge, generator, checkpoint)
        result.attack_seconds += time.perf_counter() - start + outcome.resumed_seconds
        result.resumed_attacks += outcome.resumed_attacks
        start = time.perf_counter()
        draws = draw_predictions(classifier, defense, outcome.adversarial, n_draws, generator)
        result.defense_seconds += time.perf_counter() - start
        result.defended_images += draws.numel() * max(1, defense.votes)
        l2, linf = perturbation_norms(images, outcome.adversarial)
        result.labels.append(labels.cpu())
        result.clean.append(_predict(classifier, images))
        result.defended_clean.append(_predict_defended(classifier, defense, images, defended, generator))
        result.adversarial.append(_predict(classifier, outcome.adversarial))
        result.defended_adversarial.append(draws[0])
        if defense.randomized and n_draws > 1:
            result.draws.append(draws)
        result.robust.append((outcome.robust.cpu() & (draws == labels.cpu()).all(0)))
        result.broken_by.append(outcome.broken_by.cpu())
        for name, mask in outcome.robust_under.items():
            result.robust_under[name].append(mask.cpu())
        result.iterate_fooled.append(outcome.iterate_fooled.cpu())
        result.incomplete += [mask.cpu() for mask in outcome.incomplete]
        result.surrogate_fooled += [mask.cpu() for mask in outcome.surrogate_fooled]
        result.target_robust += [mask.cpu() for mask in outcome.target_robust]
        result.l2.append(l2.cpu())
        result.linf.append(linf.cpu())
        result.psnr.append(psnr(images, defended).cpu())
        result.ssim.append(ssim(images, defended).cpu())
        result.gradient_evaluations += outcome.gradient_evaluations
        result.queries += outcome.queries
        if grid_size and not result.samples:
            keep = slice(0, grid_size)
            result.samples = {"clean": images[keep].cpu(), "adversarial": outcome.adversarial[keep].cpu(),
                              "defended": defense(outcome.adversarial[keep], generator).cpu()}
    return result
