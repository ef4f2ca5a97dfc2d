"""Small models and data for the attack tests (CPU, seconds)."""

from __future__ import annotations

import torch
from torch import nn

from defense_cli.config import compose_group_option
from defense_cli.attacks import build_attack

# Keys lowered so every attack config runs in well under a second on 8 tiny images.
FAST = {"steps": 3, "samples": 8, "samples_per_query": 8, "init_directions": 20, "init_steps": 20,
        "binary_search_steps": 2, "initial_gradient_eval_steps": 10, "max_gradient_eval_steps": 20,
        "target_classes": 3}


def tiny_model(classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, classes)).eval()


def fast_attack(name: str, **overrides):
    cfg = compose_group_option("attack", name)
    for key, value in {**FAST, **overrides}.items():
        if key in cfg:
            cfg[key] = value
    return build_attack(cfg)


def blobs(classes: int, per_class: int, seed: int, spread: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable synthetic images (1x4x4): class c is a fixed random pattern plus small noise."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, 1, 4, 4, generator=torch.Generator().manual_seed(1234)) * 0.6 + 0.2
    labels = torch.arange(classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 1, 4, 4, generator=generator) * spread
    return (centres[labels] + noise).clamp(0, 1), labels


def trained_mlp(classes: int, seed: int = 0) -> nn.Module:
    """An MLP fitted to `blobs` (clean accuracy 1.0 on held-out blobs)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, classes))
    return fit(model, *blobs(classes, 64, seed=seed), steps=300)


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> nn.Module:
    """Full-batch Adam (lr 0.01) on the cross-entropy for `steps` steps; returns the model in eval mode."""
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()
    return model.eval()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def pooled_blob_task(classes: int, per_class: int, seed: int):
    """A `trained_mlp` behind a 4x4 average pool, and `blobs` upsampled to 1x16x16 (each blob pixel
    a 4x4 block, so the pool gives the blob back): images large enough for SSIM (11x11 window)."""
    from defense_cli.data import ImageSet

    model = nn.Sequential(nn.AvgPool2d(4), trained_mlp(classes)).eval()
    images, labels = blobs(classes, per_class, seed=seed)
    return model, ImageSet(images.repeat_interleave(4, 2).repeat_interleave(4, 3), labels)
