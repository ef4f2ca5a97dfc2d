"""What an attack's iterates did, per example: the loss trace and whether any iterate fooled the
model. The raw material of two indicators of attack failure (Pintor et al. 2022, "Indicators of
attack failure", NeurIPS, sec. 3: "silent success" and "incomplete optimization")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from defense_cli.classifier_evaluations import draws_per_call


class IterateTrace(nn.Module):
    """Passes calls through to `model`; for every call on a batch of the clean batch's shape (the
    attack's iterates over the whole batch) it records each example's cross-entropy loss and
    whether the model misclassified it. Calls on other shapes (restarts on a subset, query
    probes) are passed through unrecorded."""

    def __init__(self, model: nn.Module, clean: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.model, self.shape, self.labels = model, clean.shape, labels
        self.losses: list[torch.Tensor] = []
        self.fooled = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)

    @property
    def draws_per_call(self) -> int:
        return draws_per_call(self.model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        if images.shape == self.shape:
            detached = logits.detach().float()
            self.losses.append(F.cross_entropy(detached, self.labels, reduction="none"))
            self.fooled |= detached.argmax(1) != self.labels
        return logits

    def loss_trace(self) -> torch.Tensor:
        """(T, B) losses of the recorded calls, in order (T = 0 when none was recorded)."""
        if not self.losses:
            return torch.empty(0, len(self.labels), device=self.labels.device)
        return torch.stack(self.losses)
