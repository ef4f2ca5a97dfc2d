"""Attack and defend a test set in batches, keeping every prediction the metrics need."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from defense_cli.attacks import Attack
from defense_cli.attacks.threat_models import run_attack
from defense_cli.data import ImageSet
from defense_cli.defenses import Defense
from defense_cli.progress import progress


@dataclass
class Evaluation:
    """Predictions of the bare classifier on clean, defended-clean, adversarial and
    defended-adversarial images, plus perturbations, costs and a few samples for the grid."""

    labels: list[torch.Tensor] = field(default_factory=list)
    clean: list[torch.Tensor] = field(default_factory=list)
    defended_clean: list[torch.Tensor] = field(default_factory=list)
    adversarial: list[torch.Tensor] = field(default_factory=list)
    defended_adversarial: list[torch.Tensor] = field(default_factory=list)
    draws: list[torch.Tensor] = field(default_factory=list)   # (n_draws, B) per batch, random defenses
    l2: list[torch.Tensor] = field(default_factory=list)
    linf: list[torch.Tensor] = field(default_factory=list)
    psnr: list[torch.Tensor] = field(default_factory=list)
    ssim: list[torch.Tensor] = field(default_factory=list)
    attack_seconds: float = 0.0
    defense_seconds: float = 0.0
    gradient_evaluations: int = 0
    queries: int = 0
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


def _draw_predictions(classifier: nn.Module, defense: Defense, adversarial: torch.Tensor, first: torch.Tensor,
                      n_draws: int, generator: torch.Generator) -> torch.Tensor:
    """Predictions on `n_draws` independent defenses of `adversarial` (the first one given)."""
    extra = [_predict_defended(classifier, defense, adversarial, None, generator) for _ in range(n_draws - 1)]
    return torch.stack([first, *extra])


def evaluate(classifier: nn.Module, defense: Defense, attack: Attack, target: nn.Module, test: ImageSet,
             batch_size: int, device: torch.device, generator: torch.Generator, grid_size: int = 8,
             n_draws: int = 1) -> Evaluation:
    """Run attack (against `target`) and defense (in front of `classifier`) over `test`.

    A random defense is applied `n_draws` times, independently, to each adversarial batch; the
    per-draw predictions are kept in `draws` (the first draw is `defended_adversarial`).
    """
    from defense_cli.image_quality import psnr, ssim
    from defense_cli.metrics import perturbation_norms

    result = Evaluation()
    classifier.eval()
    batches = test.batches(batch_size, device=device)
    for images, labels in progress(batches, -(-len(test) // batch_size), "attack + defend"):
        start = time.perf_counter()
        defended = defense(images, generator)
        result.defense_seconds += time.perf_counter() - start
        start = time.perf_counter()
        outcome = run_attack(attack, target, images, labels, generator)
        result.attack_seconds += time.perf_counter() - start
        start = time.perf_counter()
        defended_adv = defense(outcome.adversarial, generator)
        result.defense_seconds += time.perf_counter() - start
        l2, linf = perturbation_norms(images, outcome.adversarial)
        result.labels.append(labels.cpu())
        result.clean.append(_predict(classifier, images))
        result.defended_clean.append(_predict_defended(classifier, defense, images, defended, generator))
        result.adversarial.append(_predict(classifier, outcome.adversarial))
        result.defended_adversarial.append(
            _predict_defended(classifier, defense, outcome.adversarial, defended_adv, generator))
        if defense.randomized and n_draws > 1:
            result.draws.append(_draw_predictions(classifier, defense, outcome.adversarial,
                                                  result.defended_adversarial[-1], n_draws, generator))
        result.l2.append(l2.cpu())
        result.linf.append(linf.cpu())
        result.psnr.append(psnr(images, defended).cpu())
        result.ssim.append(ssim(images, defended).cpu())
        result.gradient_evaluations += outcome.gradient_evaluations
        result.queries += outcome.queries
        if not result.samples:
            keep = slice(0, grid_size)
            result.samples = {"clean": images[keep].cpu(), "adversarial": outcome.adversarial[keep].cpu(),
                              "defended": defended_adv[keep].cpu()}
    return result
