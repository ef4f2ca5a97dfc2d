"""Robustness metrics on predicted labels: accuracy, attack success, destruction rate, norms.

Destruction rate follows `002_fc3b45851f5789b0.txt` ch. 3 (from Kurakin et al. 2016): among the
images the classifier gets right and the attack flips, the share that the transformation T
restores,
    d = sum C(x_i, y_i) (1 - C(x'_i, y_i)) C(T(x'_i), y_i) / sum C(x_i, y_i) (1 - C(x'_i, y_i)),
with C(x, y) = 1 when the bare classifier labels x as y. It is NaN when the attack flips nothing.
"""

from __future__ import annotations

import math

import torch


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to labels (NaN on an empty set)."""
    if labels.numel() == 0:
        return math.nan
    return (predictions == labels).double().mean().item()


def attack_success_rate(clean_predictions: torch.Tensor, adversarial_predictions: torch.Tensor,
                        labels: torch.Tensor) -> float:
    """Among images classified correctly when clean, the share misclassified after the attack."""
    correct = clean_predictions == labels
    if not correct.any():
        return math.nan
    return (adversarial_predictions[correct] != labels[correct]).double().mean().item()


def destruction_rate(clean_predictions: torch.Tensor, adversarial_predictions: torch.Tensor,
                     defended_adversarial_predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """`002_...` ch. 3: share of successful adversarial images that the defense restores."""
    flipped = (clean_predictions == labels) & (adversarial_predictions != labels)
    if not flipped.any():
        return math.nan
    return (defended_adversarial_predictions[flipped] == labels[flipped]).double().mean().item()


def perturbation_norms(clean: torch.Tensor, adversarial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image L2 and Linf norms of adversarial - clean, in pixel scale."""
    delta = (adversarial - clean).flatten(1)
    return delta.norm(p=2, dim=1), delta.abs().amax(dim=1)


def mean_or_nan(values: torch.Tensor) -> float:
    return values.double().mean().item() if values.numel() else math.nan
