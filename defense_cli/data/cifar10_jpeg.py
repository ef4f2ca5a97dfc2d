"""CIFAR-10 (JPEG copy): the project's offline CIFAR-10, unpacked once from its archives into the
cache and read as an image folder (`dataset=cifar10_jpeg`)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from filelock import FileLock

from defense_cli.data.loaders import ClassFolders, DatasetSplits
from defense_cli.errors import ConfigError

ARCHIVES = ("train.tar.gz", "test.tar.gz")


def shared_data_dir() -> Path:
    """$DEFENSE_CLI_SHARED_DATA, else `../shared/data` beside the checkout."""
    explicit = os.environ.get("DEFENSE_CLI_SHARED_DATA")
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def cifar10_jpeg_root(cache_dir: Path, source: Path | None = None) -> Path:
    """Unpack the CIFAR-10 JPEG archives of `source` (default: `shared_data_dir()/cifar10-jpeg`)
    into `cache_dir/cifar10-jpeg` once, and return that folder (it holds train/ and test/)."""
    archives = Path(source) if source is not None else shared_data_dir() / "cifar10-jpeg"
    target = Path(cache_dir) / "cifar10-jpeg"
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target / ".unpack.lock")):
        for name in ARCHIVES:
            split = name.split(".")[0]
            if (target / split).is_dir() and (target / f".{split}.done").is_file():
                continue
            archive = archives / name
            if not archive.is_file():
                raise ConfigError(f"CIFAR-10 JPEG archive not found at {str(archive)!r}; set dataset.archives "
                                  f"(or DEFENSE_CLI_SHARED_DATA) to the folder that holds train.tar.gz and test.tar.gz.")
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
            (target / f".{split}.done").touch()
    return target


class Cifar10Jpeg(ClassFolders):
    """The CIFAR-10 JPEG copy (50,000 / 10,000 images, quality about 75): `archives` is the folder
    with train.tar.gz and test.tar.gz (null: $DEFENSE_CLI_SHARED_DATA/cifar10-jpeg, else
    ../shared/data/cifar10-jpeg beside the checkout), unpacked into the cache on first use."""

    def __init__(self, *, archives: str | None, **class_folders) -> None:
        super().__init__(**class_folders)
        self.archives = None if archives is None else Path(archives).expanduser()

    def read(self, cache_dir: Path | None) -> DatasetSplits:
        if cache_dir is None:
            raise ConfigError("dataset=cifar10_jpeg needs a cache folder to unpack into (paths.cache_dir)")
        return self.read_folder(cifar10_jpeg_root(cache_dir, self.archives), cache_dir)
