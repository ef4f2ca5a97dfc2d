"""CIFAR-10 (JPEG copy) for benchmarks: found in shared/data, unpacked once into the cache."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from omegaconf import OmegaConf

from defense_cli.config import compose_group_option
from defense_cli.data import DatasetSplits, load_dataset
from defense_cli.errors import ConfigError

ARCHIVES = ("train.tar.gz", "test.tar.gz")


def shared_data_dir() -> Path:
    """$DEFENSE_CLI_SHARED_DATA, else `../shared/data` beside the checkout."""
    explicit = os.environ.get("DEFENSE_CLI_SHARED_DATA")
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def cifar10_jpeg_root(cache_dir: Path, source: Path | None = None) -> Path:
    """Unpack the CIFAR-10 JPEG archives (once) and return the folder with train/ and test/."""
    archives = (source or shared_data_dir()) / "cifar10-jpeg"
    target = cache_dir / "cifar10-jpeg"
    for name in ARCHIVES:
        split = name.split(".")[0]
        if (target / split).is_dir() and (target / f".{split}.done").is_file():
            continue
        archive = archives / name
        if not archive.is_file():
            raise ConfigError(f"CIFAR-10 JPEG archive not found at {str(archive)!r}; set "
                              f"DEFENSE_CLI_SHARED_DATA to the folder that holds cifar10-jpeg/.")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        (target / f".{split}.done").touch()
    return target


def cifar10_jpeg(cache_dir: Path, source: Path | None = None, train_limit: int | None = None) -> DatasetSplits:
    """CIFAR-10 (JPEG copy) as DatasetSplits, through the image_folder loader."""
    cfg = compose_group_option("dataset", "image_folder")
    cfg = OmegaConf.merge(cfg, {"root": str(cifar10_jpeg_root(cache_dir, source)), "train_limit": train_limit})
    return load_dataset(cfg, cache_dir)
