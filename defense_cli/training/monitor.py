"""Per-epoch measurements for every training scheme: held-out accuracy and the Ortho-sum.

The Ortho-sum (`002_fc3b45851f5789b0.txt` Figure 5.9, eq. 5.2 summed over the network) shows how
much the conv filters overlap as training goes on; together with the per-epoch test accuracy it
gives the curves of Figures 5.1 and 5.9 for standard and RePr training alike.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from defense_cli.training.filter_ranking import ortho_sum
from defense_cli.training.filters import conv_units
from defense_cli.training.hooks import TrainingHooks


class EpochMonitor(TrainingHooks):
    """Records `test_accuracy` (from `evaluate(model)`) and `ortho_sum` (when the model has dense convs)."""

    def __init__(self, evaluate: Callable[[nn.Module], float] | None = None) -> None:
        self.evaluate = evaluate

    def end_epoch(self, epoch: int, model: nn.Module) -> dict[str, float]:
        metrics = {}
        if self.evaluate is not None:
            metrics["test_accuracy"] = self.evaluate(model)
        if any(isinstance(m, nn.Conv2d) and m.groups == 1 for m in model.modules()):
            metrics["ortho_sum"] = ortho_sum(conv_units(model))
        return metrics
