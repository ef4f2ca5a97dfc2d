"""Filter ranking metrics for RePr and the global choice of the filters to drop.

`002_fc3b45851f5789b0.txt` ch. 5.5, eq. 5.1-5.2 (inter-filter orthogonality, "Ortho"), and the
baselines of Table 5.1 that need no extra machinery: the L2 norm of the weights ("Weights",
[HMD16]), random ranking, and the greedy Oracle of section 5.3 (the drop in accuracy when one
filter alone is zeroed; affordable for small nets only: one evaluation pass per filter).

Every metric returns, per conv layer, a *redundancy* score per filter: the higher, the sooner the
filter is dropped. The ranking is global across layers (section 5.5: "the ranking is computed over
all the filters in the network"), so deeper, more redundant layers lose more filters.

Choices where the text is silent:
- eq. 5.1 normalises W_l row by row (each filter to unit L2 norm), which is what makes
  P_l's diagonal zero; P_l's diagonal is then set to zero explicitly, so that a filter held at
  zero (norm 0) adds nothing instead of |0 - 1| = 1.
- Each layer keeps at least its least redundant filter, so a global ranking never empties a layer.
- The Oracle ranks by accuracy drop, ties (frequent on small evaluation sets) broken by the
  increase in cross-entropy.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from defense_cli.data import ImageSet
from defense_cli.training.filters import ConvUnit

METRICS = ("ortho", "weight_norm", "random", "oracle")


def ortho_scores(unit: ConvUnit) -> torch.Tensor:
    """O_l^f of eq. 5.2 for every filter f of one layer: sum_g |<f^, g^>| over g != f, over J_l."""
    with torch.no_grad():
        weights = unit.matrix().double()
        normalized = weights / weights.norm(dim=1, keepdim=True).clamp_min(1e-12)
        overlap = (normalized @ normalized.T).abs()
        overlap.fill_diagonal_(0)
        return (overlap.sum(dim=1) / unit.num_filters).float()


def ortho_sum(units: Sequence[ConvUnit]) -> float:
    """The network's Ortho-sum (Figure 5.9): eq. 5.2 summed over every filter of every layer."""
    return float(sum(ortho_scores(unit).sum() for unit in units))


def weight_norm_scores(unit: ConvUnit) -> torch.Tensor:
    """Minus the L2 norm of each filter: small filters are dropped first."""
    with torch.no_grad():
        return -unit.matrix().norm(dim=1).float()


def random_scores(unit: ConvUnit, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(unit.num_filters, generator=generator)


@torch.no_grad()
def oracle_scores(model: nn.Module, units: Sequence[ConvUnit], data: ImageSet, device: torch.device,
                  batch_size: int = 500) -> list[torch.Tensor]:
    """Greedy Oracle (section 5.3): zero one filter's output at a time and measure the damage.

    The score is minus the accuracy drop on `data`, minus a tie-break tanh(loss increase) / (2 n)
    that stays below one image's worth of accuracy (1 / n).
    """
    was_training = model.training
    model.eval()
    base_accuracy, base_loss = _accuracy_and_loss(model, data, device, batch_size)
    tie_scale = 0.5 / len(data)
    scores = []
    for unit in units:
        layer_scores = torch.empty(unit.num_filters)
        output_module = unit.bn if unit.bn is not None else unit.conv
        for f in range(unit.num_filters):
            handle = output_module.register_forward_hook(_channel_zeroer(f))
            try:
                accuracy, loss = _accuracy_and_loss(model, data, device, batch_size)
            finally:
                handle.remove()
            layer_scores[f] = -(base_accuracy - accuracy) - tie_scale * math.tanh(loss - base_loss)
        scores.append(layer_scores)
    model.train(was_training)
    return scores


def _channel_zeroer(channel: int):
    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, channel] = 0
        return output

    return hook


def _accuracy_and_loss(model: nn.Module, data: ImageSet, device: torch.device, batch_size: int) -> tuple[float, float]:
    correct, loss = 0, 0.0
    for images, labels in data.batches(batch_size, device=device):
        logits = model(images)
        correct += (logits.argmax(1) == labels).sum().item()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
    return correct / len(data), loss / len(data)


def select_dropped(scores: Sequence[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """Indices per layer of the `fraction` most redundant filters of the whole network.

    round(fraction * total filters) are dropped, chosen globally by score; each layer's least
    redundant filter is never a candidate.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"p={fraction!r} must be in (0, 1): the fraction of filters dropped")
    candidates = []
    for layer, layer_scores in enumerate(scores):
        protected = int(torch.argmin(layer_scores))
        for f in range(len(layer_scores)):
            if f != protected:
                candidates.append((float(layer_scores[f]), layer, f))
    total = sum(len(s) for s in scores)
    count = min(len(candidates), int(math.floor(fraction * total + 0.5)))
    candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
    chosen: list[list[int]] = [[] for _ in scores]
    for _, layer, f in candidates[:count]:
        chosen[layer].append(f)
    return [torch.tensor(sorted(c), dtype=torch.long) for c in chosen]
