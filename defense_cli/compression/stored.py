"""Compressed models in the model cache, and the checkpoint loader `model=compressed` names.

A cache entry holds the base model config, the replaced layers (`LayerSpec`s) and the backbone's
weights. `model=compressed model.entry=<file>` is not an architecture of its own: its `_target_`
is `compressed_backbone`, which rebuilds the base backbone through the classifier factory, applies
the structure and loads the weights; the backbone is marked `pretrained`, so `run` uses it
without training it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from defense_cli.errors import ConfigError
from defense_cli.artifact_cache import load_verified

ENTRY_PREFIX = "compressed"


def entry_path(cache_dir: Path, base_model: str, dataset: str, key: str) -> Path:
    return cache_dir / "models" / f"{ENTRY_PREFIX}-{base_model}-{dataset}-{key}.pt"


def compressed_backbone(in_channels: int, num_classes: int, entry: str) -> nn.Module:
    """The backbone stored by `defense-cli compress` at `entry` (the path it printed)."""
    from omegaconf import OmegaConf

    from defense_cli.compression.decompose import apply_structure
    from defense_cli.models import build_classifier

    payload = load_verified(Path(str(entry)).expanduser())
    if payload is None or "structure" not in payload:
        raise ConfigError(f"model.entry={entry!r} is not a compressed model file; run `defense-cli compress` "
                          "and pass the path it prints")
    data = payload["dataset"]
    if (data["channels"], data["num_classes"]) != (in_channels, num_classes):
        raise ConfigError(f"model.entry={entry!r} was compressed for {data['channels']}-channel images and "
                          f"{data['num_classes']} classes; this dataset has {in_channels} and {num_classes}")
    dataset_cfg = OmegaConf.create({**data, "mean": [0.0] * in_channels, "std": [1.0] * in_channels})
    classifier = build_classifier(OmegaConf.create(payload["base_model"]), dataset_cfg)
    apply_structure(classifier, payload["structure"])  # layer paths are relative to the Classifier
    backbone = classifier.backbone
    backbone.load_state_dict(payload["state_dict"])
    backbone.pretrained = True
    return backbone
