"""`defense-cli bench attacks`: PGD steps/s through the foolbox adapter against a minimal hand-written
torch PGD loop on the same model and batch (the adapter's overhead as a time ratio; goal <= 1.2x).

Both run the same attack (Linf, no random start, fixed step), so their outputs must agree; the
largest difference is printed beside the timings. Models are untrained: timing only.

EOT rows (`bench_eot`): white-box BPDA-PGD with EOT against a random defense (SPLIC, ME-Net), the
draws of a step defended as one `B x eot_samples` batch (`DefendedClassifier`) against the same
attack with the draws in a Python loop (`LoopedEOT`, one defense call per draw).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from defense_cli.attacks.bpda import DefendedClassifier, bpda
from defense_cli.attacks.foolbox_attacks import PGD
from defense_cli.defenses import Defense, build_defense
from defense_cli.bench.timing import timed_alternately
from defense_cli.config import compose_group_option
from defense_cli.models import build_classifier

# model option -> dataset option whose input shape and normalisation it is timed on
BENCH_SETUPS = {"small_cnn": "mnist5k", "resnet18": "cifar10"}
EPS, STEP_SIZE = 8 / 255, 2 / 255


@dataclass
class AttackBenchRow:
    model: str
    input_shape: tuple[int, ...]
    steps: int
    foolbox_steps_per_second: float
    loop_steps_per_second: float
    max_abs_diff: float

    @property
    def time_ratio(self) -> float:
        """foolbox adapter time / hand-written loop time (1.0 = no overhead)."""
        return self.loop_steps_per_second / self.foolbox_steps_per_second


def torch_pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, step_size: float,
              steps: int) -> torch.Tensor:
    """The minimal Linf PGD loop (no random start) the adapter is measured against."""
    x = images.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), labels, reduction="sum")
        grad, = torch.autograd.grad(loss, x)
        x = torch.min(torch.max(x.detach() + step_size * grad.sign(), images - eps), images + eps).clamp(0, 1)
    return x


def bench_model(name: str, n_images: int, steps: int, device: torch.device, repeats: int) -> AttackBenchRow:
    dataset = compose_group_option("dataset", BENCH_SETUPS[name])
    torch.manual_seed(0)
    model = build_classifier(compose_group_option("model", name), dataset).to(device).eval()
    shape = (n_images, dataset.channels, dataset.image_size, dataset.image_size)
    images = torch.rand(shape, device=device)
    labels = torch.randint(0, dataset.num_classes, (n_images,), device=device)
    attack = PGD(eps=EPS, steps=steps, step_size=STEP_SIZE, random_start=False)
    (adapter_out, adapter_time), (loop_out, loop_time) = timed_alternately(
        [lambda: attack(model, images, labels).adversarial,
         lambda: torch_pgd(model, images, labels, EPS, STEP_SIZE, steps)], device, repeats)
    return AttackBenchRow(name, shape[1:], steps, steps / adapter_time, steps / loop_time,
                          (adapter_out - loop_out).abs().max().item())


def bench_attacks(models: list[str] | None, n_images: int, steps: int, device: torch.device,
                  repeats: int = 1) -> list[AttackBenchRow]:
    names = models or list(BENCH_SETUPS)
    unknown = [n for n in names if n not in BENCH_SETUPS]
    if unknown:
        raise ValueError(f"model={unknown[0]!r} has no bench setup; allowed: {', '.join(BENCH_SETUPS)}")
    return [bench_model(name, n_images, steps, device, repeats) for name in names]


@dataclass
class EOTBenchRow:
    defense: str
    n_images: int
    eot_samples: int
    steps: int
    batched_seconds: float
    loop_seconds: float

    @property
    def speedup(self) -> float:
        """Python-loop time / batched time (> 1: the batched draws are faster)."""
        return self.loop_seconds / self.batched_seconds


class LoopedEOT(nn.Module):
    """The reference: classifier(BPDA(defense)) with the EOT draws in a Python loop, one defense call each."""

    def __init__(self, classifier: nn.Module, defense: Defense, generator: torch.Generator, eot_samples: int) -> None:
        super().__init__()
        self.classifier, self.defense, self.generator, self.eot_samples = classifier, defense, generator, eot_samples

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        draws = [self.classifier(bpda(self.defense, images, self.generator)) for _ in range(self.eot_samples)]
        return torch.stack(draws).mean(0)


def bench_eot(defenses: list[str], n_images: int, steps: int, eot_samples: int, device: torch.device,
              repeats: int = 1) -> list[EOTBenchRow]:
    """BPDA-PGD + EOT seconds per attack on small_cnn / MNIST-sized images, batched draws vs a loop."""
    dataset = compose_group_option("dataset", "mnist5k")
    torch.manual_seed(0)
    model = build_classifier(compose_group_option("model", "small_cnn"), dataset).to(device).eval()
    images = torch.rand((n_images, dataset.channels, dataset.image_size, dataset.image_size), device=device)
    labels = torch.randint(0, dataset.num_classes, (n_images,), device=device)
    attack = PGD(eps=EPS, steps=steps, step_size=STEP_SIZE, random_start=False)
    rows = []
    for name in defenses:
        defense = build_defense(compose_group_option("defense", name))
        if not defense.randomized:
            raise ValueError(f"defense={name!r} is not random; EOT rows need a random defense (e.g. splic, menet)")
        generator = torch.Generator(device=device).manual_seed(0)
        batched = DefendedClassifier(model, defense, generator, eot_samples=eot_samples)
        looped = LoopedEOT(model, defense, generator, eot_samples)
        (_, batched_time), (_, loop_time) = timed_alternately(
            [lambda: attack(batched, images, labels).adversarial, lambda: attack(looped, images, labels).adversarial],
            device, repeats)
        rows.append(EOTBenchRow(name, n_images, eot_samples, steps, batched_time, loop_time))
    return rows
