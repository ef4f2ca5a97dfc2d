"""Train-or-load: a classifier is trained once per (dataset, model, train config, preprocessing)
and cached; later runs load it (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from defense_cli.artifact_cache import DATASET_KEYS_NOT_IN_KEY, cache_key, cached, config_without
from defense_cli.data import DatasetSplits, ImageSet
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.models import Classifier, build_classifier
from defense_cli.training.adversarial import adversarial_batches
from defense_cli.training.defended_data import defended_training_set
from defense_cli.training.monitor import EpochMonitor
from defense_cli.training.trainer import autocast_dtype, predict, train_classifier

log = logging.getLogger(__name__)

#: train keys that do not change the trained model
TRAIN_KEYS_NOT_IN_KEY = ("num_workers", "device", "monitor_images")


@dataclass
class TrainedClassifier:
    """A ready classifier and how it was obtained."""

    model: Classifier
    key: str
    path: Path
    cache_hit: bool
    seconds: float
    train_accuracy: float
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch series, when trained here


def classifier_key(dataset_cfg: DictConfig, model_cfg: DictConfig, train_cfg: DictConfig) -> str:
    """Hash of everything that determines the trained weights: the resolved dataset, model and train
    configs (the preprocessing defense, adversarial attack and its defense are nested in train)."""
    return cache_key({
        "dataset": config_without(dataset_cfg, DATASET_KEYS_NOT_IN_KEY),
        "model": model_cfg,
        "train": config_without(train_cfg, TRAIN_KEYS_NOT_IN_KEY),
    })


def plain_training(train_cfg: DictConfig, seed: int | None = None) -> DictConfig:
    """`train_cfg` on clean images: no preprocessing defense, no adversarial training (under `seed`
    when given, e.g. a black-box source model)."""
    changes = {"preprocess": None, "adversarial": None, "adversarial_defense": None}
    return OmegaConf.merge(train_cfg, changes if seed is None else {**changes, "seed": seed})


def obtain_classifier(
    dataset_cfg: DictConfig, model_cfg: DictConfig, train_cfg: DictConfig, splits: DatasetSplits,
    cache_dir: Path, device: torch.device,
) -> TrainedClassifier:
    """Load the cached classifier for this config, or train and cache it (on images defended by
    `train_cfg.preprocess` when set)."""
    start = time.perf_counter()
    model = build_classifier(model_cfg, dataset_cfg)
    if getattr(model.backbone, "pretrained", False):
        return _given_classifier(model, model_cfg, device, start)
    key = classifier_key(dataset_cfg, model_cfg, train_cfg)
    preprocess_cfg = train_cfg.preprocess
    path = cache_dir / "models" / f"{model_cfg.name}-{dataset_cfg.name}-{key}.pt"

    def build() -> dict:
        torch.manual_seed(train_cfg.seed)
        fresh = build_classifier(model_cfg, dataset_cfg)
        data = splits.train
        if preprocess_cfg is not None:
            source = _defense_classifier(preprocess_cfg, dataset_cfg, model_cfg, train_cfg, splits, cache_dir, device)
            data = defended_training_set(splits.train, preprocess_cfg, dataset_cfg, cache_dir, device,
                                         train_cfg.seed, source)
        context = DefenseContext(classifier=fresh.to(device), train_set=splits.train, cache_dir=cache_dir,
                                 device=device, seed=train_cfg.seed)
        transform = adversarial_batches(train_cfg, context)
        watched = splits.test.head(train_cfg.get("monitor_images"))
        monitor = EpochMonitor(lambda m: test_accuracy(m, watched, device))
        log.info("training %s on %s for cache entry %s (autocast: %s)", model_cfg.name, dataset_cfg.name, path.name,
                 autocast_dtype(train_cfg.get("precision", "float32"), device) or "none, float32")
        history = train_classifier(fresh, data, train_cfg, device, desc=f"train {model_cfg.name}",
                                   batch_transform=transform, hooks=[monitor])
        return {"state_dict": {k: v.cpu() for k, v in fresh.state_dict().items()},
                "train_accuracy": history.accuracies[-1] if history.accuracies else float("nan"),
                "losses": history.losses, "history": history.per_epoch()}

    payload, hit = cached(path, key, build)
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return TrainedClassifier(model, key, path, hit, time.perf_counter() - start,
                             float(payload["train_accuracy"]), payload.get("history", {}))


#: the model config key that names the file a pretrained model's weights come from
WEIGHTS_FILE_KEYS = ("checkpoint", "path", "entry")


def _given_classifier(model: Classifier, model_cfg: DictConfig, device: torch.device,
                      start: float) -> TrainedClassifier:
    """A model that came with its weights (a checkpoint, a saved model, a compressed entry): used
    as it is, never trained nor cached; its key is a hash of the weights themselves."""
    weights = {name: hashlib.sha256(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()).hexdigest()
               for name, t in model.state_dict().items()}
    file = next(str(model_cfg[k]) for k in WEIGHTS_FILE_KEYS if model_cfg.get(k) is not None)
    model.to(device).eval()
    return TrainedClassifier(model, cache_key({"weights": weights}), Path(file).expanduser(), False,
                             time.perf_counter() - start, float("nan"))


def _defense_classifier(preprocess_cfg: DictConfig, dataset_cfg: DictConfig, model_cfg: DictConfig,
                        train_cfg: DictConfig, splits: DatasetSplits, cache_dir: Path,
                        device: torch.device) -> tuple[str, Classifier] | None:
    """(key, model) of the classifier that a preprocessing defense needing one (R-CAM, Aug-MSROI
    saliency) uses to defend the training set: the same model trained on clean images (train-or-load)."""
    if not build_defense(preprocess_cfg).needs_classifier:
        return None
    clean = obtain_classifier(dataset_cfg, model_cfg, plain_training(train_cfg), splits, cache_dir, device)
    return clean.key, clean.model


def test_accuracy(model: Classifier, data: ImageSet, device: torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy on an ImageSet."""
    correct = 0
    for images, labels in data.batches(batch_size, device=device):
        correct += (predict(model, images, batch_size) == labels).sum().item()
    return correct / max(1, len(data))
