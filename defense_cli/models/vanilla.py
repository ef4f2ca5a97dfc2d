"""The vanilla ConvNets C^n(X) of `002_fc3b45851f5789b0.txt` section 5.4 (RePr experiments).

    Img -> [CONV(X) -> RELU]^n -> FC -> Softmax

3x3 convolutions with X filters each, stride 1 and padding 1 (the text gives no kernel size; 3x3
matches Table 5.5's parameter counts: C^3(32) has about 20 k conv parameters on RGB input, C^8(32)
about 66 k), no pooling, no skip connections. The FC layer reads the whole last feature map
(`head="flatten"`, the paper's reading); `head="gap"` averages it first, which gives the project's
CAM-ready `features` + linear `head` shape. `batch_norm=True` adds BN after each conv (not in the
paper; useful to exercise RePr's BN reset).
"""

from __future__ import annotations

import torch
from torch import nn

from defense_cli.models.architectures import GapHeadNet

HEADS = ("flatten", "gap")


class FlattenHeadNet(nn.Module):
    """features -> flatten -> linear `classifier` (no pooling: not CAM-compatible)."""

    def __init__(self, features: nn.Module, feature_size: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(feature_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def convnet(in_channels: int, num_classes: int, depth: int = 3, width: int = 32, head: str = "flatten",
            batch_norm: bool = False, image_size: int = 32) -> nn.Module:
    """C^depth(width) for square `image_size` inputs (the model configs pass the dataset's)."""
    if depth < 1 or width < 1:
        raise ValueError(f"convnet needs depth >= 1 and width >= 1; got depth={depth}, width={width}")
    if head not in HEADS:
        raise ValueError(f"convnet head={head!r} is unknown; allowed: {', '.join(HEADS)}")
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(depth):
        layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        channels = width
    features = nn.Sequential(*layers)
    if head == "gap":
        return GapHeadNet(features, width, num_classes)
    return FlattenHeadNet(features, width * image_size * image_size, num_classes)
