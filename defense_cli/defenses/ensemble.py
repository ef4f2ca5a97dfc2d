"""Ens-10: the majority vote over stochastic runs of a random defense (`002_fc3b45851f5789b0.txt`,
ch. 4, section 4.10.2 and Table 4.1: "We perform pixel deflection on a given image ten times and
do a majority vote of the predicted classes").

A defense maps images to images, so the vote needs the classifier: `majority_vote` defends the
batch `runs` times (fresh draws from the same generator), classifies each defended copy and returns
the most frequent class per image. Ties (e.g. 5 / 5) go to the class with the higher mean softmax
probability over the runs, so the result never depends on class order. A defense with `votes > 1` (the
`votes` config value of pixel deflection) is scored this way by `defense_cli.evaluation`.
"""

from __future__ import annotations

import torch
from torch import nn

from defense_cli.defenses.base import Defense
from defense_cli.parameter_checks import check_int


def vote_scores(classifier: nn.Module, defense: Defense, images: torch.Tensor, runs: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, classes): votes per class plus half the mean softmax probability (a tie-break in [0, 0.5])."""
    check_int("runs", runs, 1)
    votes, probabilities = None, None
    with torch.no_grad():
        for _ in range(runs):
            logits = classifier(defense(images, generator))
            one_hot = nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)
            probability = logits.softmax(1)
            votes = one_hot if votes is None else votes + one_hot
            probabilities = probability if probabilities is None else probabilities + probability
    return votes + 0.5 * probabilities / runs


def majority_vote(classifier: nn.Module, defense: Defense, images: torch.Tensor, runs: int = 10,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Predicted class (B,) by majority vote over `runs` defended copies of `images`."""
    return vote_scores(classifier, defense, images, runs, generator).argmax(1)

