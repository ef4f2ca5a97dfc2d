"""RePr filter ranking: eq. 5.1-5.2 (Ortho), weight norm, greedy Oracle, global selection."""

import pytest
import torch
from torch import nn

from defense_cli.data import ImageSet
from defense_cli.training.filter_ranking import (oracle_scores, ortho_scores, ortho_sum, select_dropped,
                                                 weight_norm_scores)
from defense_cli.training.filters import ConvUnit, conv_units


def unit_with_rows(rows: torch.Tensor, name: str = "conv") -> ConvUnit:
    """A 1-channel 3x3 conv whose flattened filters are `rows` (J x 9)."""
    conv = nn.Conv2d(1, rows.shape[0], 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(rows.reshape(-1, 1, 3, 3))
    return ConvUnit(name, conv, None)


def orthonormal_rows(count: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=torch.Generator().manual_seed(seed)))
    return q.T[:count]


def test_ortho_is_zero_on_orthogonal_filters_of_any_norm():
    rows = orthonormal_rows(5) * torch.tensor([[0.1], [1.0], [3.0], [7.0], [0.5]])
    scores = ortho_scores(unit_with_rows(rows))
    assert torch.allclose(scores, torch.zeros(5), atol=1e-6)


def test_ortho_counts_overlap_over_layer_size():
    rows = orthonormal_rows(4)
    rows[1] = 2.0 * rows[0]  # a duplicate at another scale: |cos| = 1 with filter 0
    scores = ortho_scores(unit_with_rows(rows))
    assert torch.allclose(scores, torch.tensor([0.25, 0.25, 0.0, 0.0]), atol=1e-6)


def test_ortho_of_opposite_phase_filters_is_positive():
    rows = orthonormal_rows(3)
    rows[2] = -rows[0] + 0.5 * rows[1]
    scores = ortho_scores(unit_with_rows(rows))
    assert (scores > 0.1).all()


def test_zero_filter_adds_nothing_to_ortho_sum():
    rows = orthonormal_rows(3)
    rows[1] = rows[0]
    full = ortho_sum([unit_with_rows(rows)])
    rows[2] = 0.0
    assert ortho_sum([unit_with_rows(rows)]) == pytest.approx(full, abs=1e-6)


def test_ranking_is_global_across_layers():
    orthogonal = unit_with_rows(orthonormal_rows(4), "a")
    correlated_rows = orthonormal_rows(4, seed=1)
    correlated_rows[1:] = correlated_rows[0] + 0.1 * correlated_rows[1:]
    correlated = unit_with_rows(correlated_rows, "b")
    dropped = select_dropped([ortho_scores(orthogonal), ortho_scores(correlated)], 0.375)  # 3 of 8
    assert dropped[0].tolist() == []
    assert len(dropped[1]) == 3


def test_selection_never_empties_a_layer_and_drops_round_p_total():
    scores = [torch.tensor([5.0, 6.0]), torch.tensor([0.0, 0.1, 0.2, 0.3])]
    dropped = select_dropped(scores, 0.5)  # 3 of 6
    assert dropped[0].tolist() == [1]
    assert dropped[1].tolist() == [2, 3]
    assert sum(len(d) for d in dropped) == 3


@pytest.mark.parametrize("p", [0.0, 1.0, -0.2, 1.5])
def test_selection_rejects_p_outside_open_unit_interval(p):
    with pytest.raises(ValueError, match=f"p={p}"):
        select_dropped([torch.zeros(4)], p)


def test_weight_norm_drops_the_smallest_filters():
    rows = orthonormal_rows(4) * torch.tensor([[3.0], [0.1], [2.0], [0.2]])
    dropped = select_dropped([weight_norm_scores(unit_with_rows(rows))], 0.5)
    assert dropped[0].tolist() == [1, 3]


def test_oracle_drops_the_filter_the_classifier_ignores():
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
    head = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0   # relu(x): evidence for class 0
        conv.weight[1, 0, 1, 1] = -1.0  # relu(-x): evidence for class 1
        conv.weight[2, 0, 1, 1] = 0.5   # never reaches the logits
        head.weight.copy_(torch.tensor([[10.0, -10.0, 0.0], [-10.0, 10.0, 0.0]]))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    images = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = (images.mean(dim=(1, 2, 3)) < 0).long()
    scores = oracle_scores(model, conv_units(model), ImageSet(images, labels), torch.device("cpu"))
    assert scores[0][2] == 0.0
    assert (scores[0][:2] < -0.3).all()  # zeroing either evidence filter costs ~half the accuracy
    assert select_dropped(scores, 0.34)[0].tolist() == [2]
