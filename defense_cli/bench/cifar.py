"""CIFAR-10 (JPEG copy) for benchmarks, through the `cifar10_jpeg` dataset (unpacked once into the cache)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from defense_cli.config import compose_group_option
from defense_cli.data import DatasetSplits, load_dataset


def cifar10_jpeg(cache_dir: Path, source: Path | None = None, train_limit: int | None = None) -> DatasetSplits:
    """CIFAR-10 (JPEG copy) as DatasetSplits; `source` is the folder with the archives (default: the shared data)."""
    cfg = compose_group_option("dataset", "cifar10_jpeg")
    cfg = OmegaConf.merge(cfg, {"archives": None if source is None else str(source), "train_limit": train_limit})
    return load_dataset(cfg, cache_dir)
