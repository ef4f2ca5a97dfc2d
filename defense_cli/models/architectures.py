"""Backbones: SmallCNN, LeNet-5, and the CIFAR variants of ResNet-18 and VGG-16-BN.

Backbones with a `features` module and a linear `head` after global average pooling support
class activation maps (see `Classifier.supports_cam`).
"""

from __future__ import annotations

import torch
from torch import nn


class GapHeadNet(nn.Module):
    """features -> global average pooling -> linear head: the CAM-compatible shape."""

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(feature_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def small_cnn(in_channels: int, num_classes: int, width: int = 32) -> GapHeadNet:
    """Three conv-BN-ReLU blocks (two strided) + GAP + linear; about 0.1 M parameters at width 32."""
    features = nn.Sequential(
        conv_bn_relu(in_channels, width),
        conv_bn_relu(width, 2 * width, stride=2),
        conv_bn_relu(2 * width, 4 * width, stride=2),
    )
    return GapHeadNet(features, 4 * width, num_classes)


class LeNet(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling; works for 28x28 and 32x32 inputs."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.AdaptiveMaxPool2d(5),
        )
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 25, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


def resnet18(in_channels: int, num_classes: int) -> GapHeadNet:
    """ResNet-18 (He et al. 2016), CIFAR variant: 3x3 stride-1 stem and no max pooling."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(num_classes=num_classes)
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), net.bn1, net.relu)
    features = nn.Sequential(stem, net.layer1, net.layer2, net.layer3, net.layer4)
    return GapHeadNet(features, 512, num_classes)


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn(in_channels: int, num_classes: int) -> GapHeadNet:
    """VGG-16 with batch norm (Simonyan and Zisserman 2015), CIFAR variant with a 512 -> classes head."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 28x28 inputs reach 1x1 too
        else:
            layers.append(conv_bn_relu(channels, int(item)))
            channels = int(item)
    return GapHeadNet(nn.Sequential(*layers), channels, num_classes)
