"""The classifier factory: the `model` config's `_target_` builds the backbone, called with the
dataset's `in_channels` and `num_classes` (those its signature takes) and the config's other keys;
the dataset's mean and std wrap it in a `Classifier`. Adding a model is one backbone function or
class + one YAML file.

Two keys of every model config are the factory's own, not the backbone's (timm-style: weights are
an argument of the factory, not an architecture): `checkpoint` (null, or a state_dict file to load,
see `checkpoints.py`) and `normalization` (`dataset`: the Classifier normalises [0, 1] images with
the dataset's mean and std, as the project's own models are trained; `none`: the network takes
[0, 1] images as they are); `default_lr`, where a model has one, is read by the train config
(`train.lr` defaults to it).
"""

from __future__ import annotations

import importlib
import inspect

from omegaconf import DictConfig, OmegaConf
from torch import nn

from defense_cli.errors import ConfigError
from defense_cli.instantiate import build_from_config
from defense_cli.models.checkpoints import check_output_shape, load_checkpoint
from defense_cli.models.classifier import Classifier

FACTORY_KEYS = ("checkpoint", "normalization", "default_lr")
NORMALIZATIONS = ("dataset", "none")


def build_classifier(model_cfg: DictConfig, dataset_cfg: DictConfig) -> Classifier:
    """The classifier the model config describes for the dataset's channels, classes and
    normalisation: freshly initialised, or with the weights of `model.checkpoint` (checked)."""
    name = model_cfg.get("name")
    normalization = model_cfg.get("normalization", "dataset")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"model.normalization={normalization!r} is not allowed; allowed: dataset (the model "
                          "expects images normalised with the dataset's mean and std) or none (it takes [0, 1] images)")
    plain = OmegaConf.to_container(model_cfg, resolve=True)
    architecture = OmegaConf.create({k: v for k, v in plain.items() if k not in FACTORY_KEYS})
    backbone = build_from_config(architecture, "model", nn.Module,
                                 **_dataset_arguments(architecture, dataset_cfg))
    channels = dataset_cfg.channels
    mean, std = (dataset_cfg.mean, dataset_cfg.std) if normalization == "dataset" else ([0.0] * channels,
                                                                                        [1.0] * channels)
    classifier = Classifier(backbone, mean, std)
    if model_cfg.get("checkpoint") is not None:
        load_checkpoint(classifier, model_cfg.checkpoint, name)
    if getattr(backbone, "pretrained", False) and "image_size" in dataset_cfg:
        check_output_shape(classifier.eval(), channels, dataset_cfg.image_size, dataset_cfg.num_classes, name)
    return classifier


def _dataset_arguments(architecture: DictConfig, dataset_cfg: DictConfig) -> dict:
    """`in_channels` and `num_classes` for the backbone, less those a user's class does not take."""
    arguments = {"in_channels": dataset_cfg.channels, "num_classes": dataset_cfg.num_classes}
    target = architecture.get("_target_")
    if target is None:  # build_from_config names the missing _target_
        return arguments
    try:
        module, _, attribute = str(target).rpartition(".")
        built_by = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"model._target_={target!r} cannot be imported ({type(err).__name__}: {err}); "
                          "give an importable class or function, e.g. mypackage.models.Net") from err
    try:
        parameters = inspect.signature(built_by).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): pass both
        return arguments
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return arguments
    return {k: v for k, v in arguments.items() if k in parameters}
