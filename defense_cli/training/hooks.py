"""Callbacks that a training scheme (RePr) or a monitor plugs into `train_classifier`.

The loop calls `start_epoch` after switching the model to training mode, `after_step` after every
optimiser step, and `end_epoch` after each epoch; the numbers `end_epoch` returns are appended to
`TrainingLog.extra` under their names, one value per epoch.
"""

from __future__ import annotations

import torch
from torch import nn


class TrainingHooks:
    """Base class: every callback defaults to doing nothing, so a hook overrides only what it needs."""

    def start_epoch(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called before the first batch of epoch `epoch` (0-based)."""
        return None

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after every `optimizer.step()`."""
        return None

    def end_epoch(self, epoch: int, model: nn.Module) -> dict[str, float]:
        """Called after the last batch of epoch `epoch`; returns per-epoch metrics to record."""
        return {}
