"""Datasets: the embedded mnist5k split, image folders, and missing data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from defense_cli.config import compose
from defense_cli.data import load_dataset
from defense_cli.data.loaders import stratified_split
from defense_cli.errors import ConfigError


def test_mnist5k_is_a_stratified_4000_1000_split_of_real_digits():
    splits = load_dataset(compose().dataset)
    assert len(splits.train) == 4000 and len(splits.test) == 1000
    assert splits.train.shape == (1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert torch.bincount(splits.test.labels, minlength=10).tolist() == [100] * 10
    assert torch.bincount(splits.train.labels, minlength=10).tolist() == [400] * 10
    # shuffled: the first 50 test images are not all one class
    assert len(set(splits.test.labels[:50].tolist())) > 5


def test_split_is_deterministic_and_disjoint():
    labels = np.repeat(np.arange(3), 10)
    a = stratified_split(labels, 0.2, seed=1)
    b = stratified_split(labels, 0.2, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not set(a[0]) & set(a[1]) and len(a[0]) + len(a[1]) == 30


def test_limit_keeps_the_first_test_images():
    cfg = compose(["dataset.limit=7"]).dataset
    assert len(load_dataset(cfg).test) == 7


def _write_folder(root, per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_image_folder_reads_classes_in_alphabetical_order_and_caches(tmp_path):
    _write_folder(tmp_path / "data")
    cfg = compose(["dataset=image_folder", f"dataset.root={tmp_path / 'data'}"]).dataset
    splits = load_dataset(cfg, tmp_path / "cache")
    assert splits.classes == ("cat", "dog")
    assert len(splits.train) == 6 and splits.train.shape == (3, 32, 32)
    assert sorted(splits.test.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    again = load_dataset(cfg, tmp_path / "cache")
    assert torch.equal(again.train.images, splits.train.images)
    assert any((tmp_path / "cache" / "datasets").iterdir())


def test_missing_image_folder_names_the_key(tmp_path):
    cfg = compose(["dataset=image_folder", f"dataset.root={tmp_path}"]).dataset
    with pytest.raises(ConfigError, match="dataset.root"):
        load_dataset(cfg)
