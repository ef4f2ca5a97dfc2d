"""A labelled set of images held in memory, iterated in float batches in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) as uint8 in 0..255 or float in [0, 1], with integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise ValueError(
                f"images must be (N, C, H, W) and labels (N,); got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def head(self, n: int | None) -> ImageSet:
        """The first n images (all when n is None)."""
        if n is None or n >= len(self):
            return self
        return ImageSet(self.images[:n], self.labels[:n])

    def float_images(self, index: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Images at `index` as float32 in [0, 1]."""
        chunk = self.images[index]
        if chunk.dtype == torch.uint8:
            return chunk.float().div_(255.0)
        return chunk.float()

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels) batches on `device`; shuffled with `generator` when asked."""
        order = torch.randperm(len(self), generator=generator) if shuffle else None
        for start in range(0, len(self), batch_size):
            index = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            yield self.float_images(index).to(device), self.labels[index].to(device)
