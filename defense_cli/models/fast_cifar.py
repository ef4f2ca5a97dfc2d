"""A small residual VGG-style network for CIFAR-size images, sized to train on a CPU
(`conf/experiment/cifar10_cpu.yaml`; measured figures in experiments/results/cifar10_cpu.md).

Sources (not among the seed papers; the project's fast-training references):
- K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv:2404.00498 (2024), sec. 3,
  and github.com/KellerJordan/cifar10-airbench (`airbench94.py`): a 2x2 stem convolution, three
  groups conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU with widths 64/256/256, label
  smoothing 0.2, flip + 2-pixel translate, test-time flipping.
- D. Page, "How to train your ResNet" (Myrtle.ai, 2018; the DAWNBench ResNet-9): residual
  connections around the second convolution of a group.

Differences from airbench94, chosen for CPU scale and for the project's model interface: widths are
a parameter (the preset's 48/96/192: 39 M multiply-adds and 0.66 M parameters per 32x32 image;
32/64/128: 20 M and 0.30 M;
against 118 M and 1.97 M at airbench's 64/256/256), the stem is a plain learned convolution
(not the frozen patch-whitening initialisation), the group's second convolution is
residual (Page), and the network ends in global *average* pooling + one linear `head` (airbench ends
in max pooling), so that class activation maps work. Weights are kept channels-last, which is what
oneDNN's CPU convolutions run fastest on.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from defense_cli.models.architectures import GapHeadNet
from defense_cli.parameter_checks import check_int


class ConvGroup(nn.Module):
    """conv -> 2x2 max-pool -> BN -> GELU, then a residual conv -> BN -> GELU (halves H and W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm1(self.pool(self.conv1(x))))
        return x + self.activation(self.norm2(self.conv2(x)))


class ChannelsLast(nn.Module):
    """Hands the batch on in channels-last memory layout (the values are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class MirrorAveraged(nn.Module):
    """`inner`'s feature maps; in eval mode with `enabled`, the mean of the maps of the image and
    the mirrored maps of its mirror (airbench's test-time flipping). Pooling and the linear
    head commute with the mean, so the logits are the mean of both views' logits and a class
    activation map is the mean of both views' maps."""

    def __init__(self, inner: nn.Module, enabled: bool) -> None:
        super().__init__()
        self.inner, self.enabled = inner, bool(enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.inner(x)
        if self.enabled and not self.training:
            maps = 0.5 * (maps + self.inner(x.flip(-1)).flip(-1))
        return maps


class FastCifarNet(GapHeadNet):
    """2x2 stem conv + GELU, three `ConvGroup`s, global average pooling, linear head; with
    `test_time_flip`, eval-mode features average the image and its mirror (`MirrorAveraged`)."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128),
                 stem_width: int = 24, test_time_flip: bool = False) -> None:
        if len(widths) != 3:
            raise ValueError(f"widths={list(widths)} must give the three groups' channels, e.g. [32, 64, 128]")
        widths = [check_int(f"widths[{i}]", w, 1) for i, w in enumerate(widths)]
        stem_width = check_int("stem_width", stem_width, 1)
        layers = nn.Sequential(
            ChannelsLast(), nn.Conv2d(in_channels, stem_width, 2, bias=True), nn.GELU(),
            ConvGroup(stem_width, widths[0]), ConvGroup(widths[0], widths[1]), ConvGroup(widths[1], widths[2]),
        )
        super().__init__(MirrorAveraged(layers, test_time_flip), widths[2], num_classes)
        self.to(memory_format=torch.channels_last)
