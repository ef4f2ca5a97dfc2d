"""The classifier wrapper every part of the project talks to.

A `Classifier` takes images in [0, 1], normalises them with the dataset's mean and std, and runs a
backbone. Backbones that end in global average pooling + one linear layer expose
`features(x)` (the last conv maps) and `head` (that linear layer): this is what class activation
maps (R-CAM, Aug-MSROI saliency) need, and `supports_cam` says whether a model has it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Classifier(nn.Module):
    """Normalisation + backbone. Input (B, C, H, W) in [0, 1]; output logits (B, num_classes)."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    @property
    def supports_cam(self) -> bool:
        """True when the backbone is `features` -> global average pool -> linear `head`."""
        return hasattr(self.backbone, "features") and isinstance(getattr(self.backbone, "head", None), nn.Linear)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature maps (B, K, h, w) of images in [0, 1]."""
        if not self.supports_cam:
            raise ValueError(
                f"model {type(self.backbone).__name__} has no `features` + linear `head`; "
                "class activation maps need small_cnn, resnet18 or vgg16_bn"
            )
        return self.backbone.features(self.normalize(x))

    @property
    def head(self) -> nn.Linear:
        """The linear layer that maps pooled features to logits (CAM weights)."""
        if not self.supports_cam:
            raise ValueError(f"model {type(self.backbone).__name__} has no linear `head`")
        return self.backbone.head
