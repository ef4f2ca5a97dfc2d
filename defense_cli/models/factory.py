"""The classifier factory: the `model` config's `_target_` builds the backbone, called with the
dataset's `in_channels` and `num_classes` (and the config's other keys); the dataset's mean and
std wrap it in a `Classifier`. Adding a model is one backbone function or class + one YAML file."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from defense_cli.instantiate import build_from_config
from defense_cli.models.classifier import Classifier


def build_classifier(model_cfg: DictConfig, dataset_cfg: DictConfig) -> Classifier:
    """A freshly initialised classifier for the dataset's channels, classes and normalisation."""
    backbone = build_from_config(model_cfg, "model", nn.Module, in_channels=dataset_cfg.channels,
                                 num_classes=dataset_cfg.num_classes)
    return Classifier(backbone, dataset_cfg.mean, dataset_cfg.std)
