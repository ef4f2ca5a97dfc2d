"""Metrics on small hand-built cases."""

from __future__ import annotations

import math

import torch

from defense_cli.metrics import accuracy, attack_success_rate, destruction_rate, perturbation_norms

LABELS = torch.tensor([0, 1, 2, 3, 4, 5])


def test_accuracy_counts_matches():
    assert accuracy(torch.tensor([0, 1, 0, 3, 0, 0]), LABELS) == 3 / 6


def test_attack_success_only_counts_images_that_were_right():
    clean = torch.tensor([0, 1, 2, 3, 9, 9])        # 4 right, 2 wrong
    adversarial = torch.tensor([9, 9, 2, 3, 4, 5])  # flips 2 of the 4 right ones
    assert attack_success_rate(clean, adversarial, LABELS) == 2 / 4


def test_destruction_rate_is_the_share_of_flipped_images_restored():
    clean = torch.tensor([0, 1, 2, 3, 9, 9])        # right on 0..3
    adversarial = torch.tensor([9, 9, 9, 3, 4, 5])  # flips 0, 1, 2
    defended = torch.tensor([0, 9, 2, 9, 4, 5])     # restores 0 and 2 (3 was never flipped)
    assert destruction_rate(clean, adversarial, defended, LABELS) == 2 / 3


def test_destruction_rate_is_nan_when_nothing_was_flipped():
    assert math.isnan(destruction_rate(LABELS, LABELS, LABELS, LABELS))


def test_perturbation_norms():
    clean = torch.zeros(2, 1, 2, 2)
    adversarial = clean.clone()
    adversarial[0, 0, 0, 0] = 0.3
    adversarial[0, 0, 1, 1] = 0.4
    l2, linf = perturbation_norms(clean, adversarial)
    assert torch.allclose(l2, torch.tensor([0.5, 0.0]))
    assert torch.allclose(linf, torch.tensor([0.4, 0.0]))
