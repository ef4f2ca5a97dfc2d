"""Training sets passed through a defense (SPLIC-Net, ME-Net training), computed once and cached.

The defended set is keyed by the dataset and the defense config, so a sweep over classifier
settings reuses it. A defense may return several views of each image for training (ME-Net trains
on n masks): it does so by defining `training_views(images, generator) -> list of batches`.
A defense that needs a classifier (R-CAM pixel deflection, semantic JPEG's saliency) is given
`classifier`, and that classifier's cache key enters the set's key.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from defense_cli.data import ImageSet
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.models import Classifier
from defense_cli.progress import progress
from defense_cli.artifact_cache import DATASET_KEYS_NOT_IN_KEY, cache_key, cached, config_without

BATCH = 256


def defended_training_set(train: ImageSet, defense_cfg: DictConfig, dataset_cfg: DictConfig,
                          cache_dir: Path, device: torch.device, seed: int,
                          classifier: tuple[str, Classifier] | None = None) -> ImageSet:
    """`train` with every image replaced by its defended version(s); cached on disk.

    `classifier` is (cache key, model) for a defense that needs one.
    """
    parts = {"dataset": config_without(dataset_cfg, DATASET_KEYS_NOT_IN_KEY), "defense": defense_cfg, "seed": seed, "n": len(train)}
    if classifier is not None:
        parts["classifier"] = classifier[0]
    key = cache_key(parts)
    path = cache_dir / "defended" / f"{defense_cfg.name}-{dataset_cfg.name}-{key}.pt"

    def build() -> dict:
        defense = build_defense(defense_cfg)
        defense.prepare(DefenseContext(train_set=train, cache_dir=cache_dir, device=device, seed=seed,
                                       classifier=classifier[1] if classifier is not None else None))
        generator = torch.Generator(device=device).manual_seed(seed)
        views = getattr(defense, "training_views", None)
        images, labels = [], []
        for batch, batch_labels in progress(train.batches(BATCH, device=device), -(-len(train) // BATCH),
                                            f"defend training set ({defense_cfg.name}, {len(train)} images)"):
            outputs = views(batch, generator) if views is not None else [defense(batch, generator)]
            for out in outputs:
                images.append(out.mul(255).round().to(torch.uint8).cpu())
                labels.append(batch_labels.cpu())
        return {"images": torch.cat(images), "labels": torch.cat(labels)}

    payload, _ = cached(path, key, build)
    return ImageSet(payload["images"], payload["labels"])
