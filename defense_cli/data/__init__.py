"""Datasets as in-memory image tensors: NCHW, pixels in [0, 1] once batched."""

from defense_cli.data.image_set import ImageSet
from defense_cli.data.loaders import DatasetSplits, load_dataset

__all__ = ["DatasetSplits", "ImageSet", "load_dataset"]
