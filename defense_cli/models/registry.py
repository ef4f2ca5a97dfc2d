"""Model names in configs map to backbone factories here (`model.name`)."""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig, OmegaConf
from torch import nn

from defense_cli.errors import ConfigError
from defense_cli.models import architectures, vanilla
from defense_cli.models.classifier import Classifier

BackboneFactory = Callable[..., nn.Module]


def _compressed_backbone(in_channels: int, num_classes: int, entry: str) -> nn.Module:
    """A model stored by `defense-cli compress` (imported lazily: compression imports models)."""
    from defense_cli.compression.stored import compressed_backbone

    return compressed_backbone(in_channels, num_classes, entry)


_ARCHITECTURES: dict[str, BackboneFactory] = {
    "small_cnn": architectures.small_cnn,
    "lenet": architectures.LeNet,
    "resnet18": architectures.resnet18,
    "vgg16_bn": architectures.vgg16_bn,
    "compressed": _compressed_backbone,
    "convnet": vanilla.convnet,
}


def register_architecture(name: str, factory: BackboneFactory) -> None:
    """Make `model.name=<name>` build `factory(in_channels, num_classes, **model_kwargs)`."""
    _ARCHITECTURES[name] = factory


def list_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def build_classifier(model_cfg: DictConfig, dataset_cfg: DictConfig) -> Classifier:
    """A freshly initialised classifier for the dataset's channels, classes and normalisation."""
    name = model_cfg.name
    if name not in _ARCHITECTURES:
        raise ConfigError(f"model.name={name!r} is unknown; allowed: {', '.join(list_architectures())}.")
    kwargs = {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items() if k != "name"}
    backbone = _ARCHITECTURES[name](dataset_cfg.channels, dataset_cfg.num_classes, **kwargs)
    return Classifier(backbone, dataset_cfg.mean, dataset_cfg.std)
