"""Ens-10 (002 ch. 4, Table 4.1): the majority vote over stochastic runs of a defense, and its use
by the evaluation when a defense has votes > 1."""

import pytest
import torch
from torch import nn

from defense_cli.defenses.base import Defense
from defense_cli.defenses.ensemble import majority_vote, vote_scores


class CountingDefense(Defense):
    """Run i (0, 1, 2, ...) returns a constant image of value i / 10."""

    randomized = True

    def __init__(self):
        self.calls = 0

    def transform(self, images, generator):
        value = self.calls / 10
        self.calls += 1
        return torch.full_like(images, value)


class ThresholdClassifier(nn.Module):
    """Class 1 when the mean brightness is above `threshold` (confidence grows with distance), else class 0."""

    def __init__(self, threshold=0.35):
        super().__init__()
        self.threshold = threshold

    def forward(self, images):
        margin = images.mean(dim=(1, 2, 3)) - self.threshold
        return torch.stack((-margin, margin), dim=1) * 10


def test_majority_of_ten_runs():
    images = torch.zeros(2, 1, 4, 4)
    # runs 0..9 give 0.0..0.9: four runs below 0.35 (class 0), six above (class 1)
    assert majority_vote(ThresholdClassifier(), CountingDefense(), images, runs=10).tolist() == [1, 1]
    scores = vote_scores(ThresholdClassifier(), CountingDefense(), images, runs=10)
    assert scores.floor()[0].tolist() == [4, 6]


@pytest.mark.parametrize("threshold, winner", [(0.32, 1), (0.38, 0)])
def test_a_tie_goes_to_the_more_confident_class(threshold, winner):
    images = torch.zeros(1, 1, 2, 2)
    defense = CountingDefense()
    defense.calls = 3  # two runs: 0.3 (class 0) and 0.4 (class 1), one vote each
    assert majority_vote(ThresholdClassifier(threshold), defense, images, runs=2).tolist() == [winner]


@pytest.mark.parametrize("runs", [0, 1.5])
def test_runs_must_be_a_positive_integer(runs):
    with pytest.raises(ValueError, match="runs"):
        majority_vote(ThresholdClassifier(), CountingDefense(), torch.zeros(1, 1, 2, 2), runs=runs)


def test_evaluation_votes_when_the_defense_asks_for_it():
    from defense_cli.evaluation import _predict_defended

    images = torch.zeros(3, 1, 4, 4)
    defense = CountingDefense()
    defense.votes = 10
    voted = _predict_defended(ThresholdClassifier(), defense, images, defense(images, None), None)
    assert voted.tolist() == [1, 1, 1] and defense.calls == 11
    single = CountingDefense()
    assert _predict_defended(ThresholdClassifier(), single, images, single(images, None), None).tolist() == [0, 0, 0]
