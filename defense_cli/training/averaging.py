"""Exponential moving average of a model's weights (Polyak and Juditsky 1992; the "EMA" of the
fast CIFAR-10 recipes, e.g. Page 2018 "How to train your ResNet", and a simpler stand-in
for airbench's lookahead, Jordan 2024, arXiv:2404.00498, sec. 3): after every step,
avg <- decay * avg + (1 - decay) * weights, batch-norm statistics included."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The running average of `model` (a copy); `copy_to` writes it back into the model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay={decay!r} must be in (0, 1), e.g. 0.99")
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.average.update_parameters(model)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.average.module.state_dict())
