"""Datasets as in-memory image tensors: NCHW, pixels in [0, 1] once batched."""

from defense_cli.data.image_set import ImageSet
from defense_cli.data.loaders import Dataset, DatasetSplits, load_dataset

__all__ = ["Dataset", "DatasetSplits", "ImageSet", "load_dataset"]
