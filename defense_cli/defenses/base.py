"""What every input-transformation defense is: a batched map from images in [0, 1] to images in [0, 1].

A defense class takes all its parameters in the constructor (the config file gives the papers'
defaults) and is called on a batch: `defense(x, generator=None)` with x of shape (B, C, H, W).
Random defenses set `randomized = True` and draw all their randomness from the `generator`, so a
run repeats under a seed and EOT can draw fresh samples. Defenses that need more than the image
(the classifier, the training set, a fitted dictionary) receive it once through `prepare`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

import torch

if TYPE_CHECKING:
    from defense_cli.data import ImageSet
    from defense_cli.models import Classifier

RANGE_TOLERANCE = 1e-5


@dataclass
class DefenseContext:
    """What a defense may need besides the image, handed over once before it is used."""

    classifier: Classifier | None = None
    train_set: ImageSet | None = None
    cache_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0


class Defense(ABC):
    """Base class of input transformations. Subclasses implement `transform`."""

    #: True when the output depends on random draws (EOT applies; report mean/std over draws).
    randomized: ClassVar[bool] = False
    #: True when `prepare` needs `context.classifier` (LRC-HSP keypoints, R-CAM, Aug-MSROI).
    needs_classifier: ClassVar[bool] = False
    #: True when `prepare` needs `context.train_set` (STL dictionaries, quilting patches).
    needs_train_set: ClassVar[bool] = False
    #: The defenses a composite applies in order (a chain's steps); empty for a single defense.
    steps: Sequence[Defense] = ()
    #: Stochastic runs a majority vote takes when scoring (Ens-10 of pixel deflection); 1: no vote.
    votes: int = 1

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(images)
        with torch.no_grad():
            return self.transform(images, generator)

    @abstractmethod
    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Defend a valid batch (B, C, H, W) in [0, 1]; return the same shape, dtype, device."""

    def prepare(self, context: DefenseContext) -> None:
        """Receive the classifier, training data or cache folder; the default needs none."""

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A differentiable torch approximation g(x) of the defense, for BPDA's backward pass.

        Athalye et al. (2018, section 4.1): the attacker runs the real defense forward and
        differentiates g instead. The default is the identity, g(x) = x; a defense may override it
        with, for example, a few unrolled differentiable iterations of its own algorithm. It must
        keep the autograd graph (no `torch.no_grad`, no detaching).
        """
        return images

    @property
    def has_surrogate(self) -> bool:
        """True when the class overrides `surrogate` (so `threat_model.bpda=surrogate` applies)."""
        return type(self).surrogate is not Defense.surrogate

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise ValueError unless `images` is a finite float batch (B, C, H, W) in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype}")
    if images.numel() == 0:
        return
    low, high = (v.item() for v in torch.aminmax(images))   # one pass; NaN propagates into both
    if math.isnan(low) or math.isnan(high):
        bad = torch.isnan(images).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN (images at batch index {bad[:10]})")
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")
