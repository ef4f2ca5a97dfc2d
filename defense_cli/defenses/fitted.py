"""Parts of a defense fitted once on clean training images (STL dictionaries, quilting patches).

A defense with `needs_train_set = True` calls `fit_once` from `prepare`: the fitted tensors are
cached under `context.cache_dir/defenses/`, keyed by a hash of the training images actually used
(their content and count) and of the defense's own fitting parameters, so a second run on the same
data and config loads them instead of fitting again.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch

from defense_cli.defenses.base import DefenseContext
from defense_cli.artifact_cache import cache_key, cached


def training_images(context: DefenseContext, limit: int, owner: str) -> torch.Tensor:
    """The first `limit` clean training images of the context as float (N, C, H, W) in [0, 1]."""
    if context.train_set is None or len(context.train_set) == 0:
        raise ValueError(f"{owner} needs clean training images: prepare(context) got no context.train_set")
    return context.train_set.float_images(slice(0, limit))


def content_hash(images: torch.Tensor) -> str:
    """A hash of the bytes and shape of `images` (the data part of a cache key)."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fit_once(context: DefenseContext, kind: str, images: torch.Tensor, parameters: dict[str, Any],
             fit: Callable[[], dict[str, torch.Tensor]]) -> dict[str, Any]:
    """`fit()` on `images`, cached under `context.cache_dir` (no cache when it is None)."""
    if context.cache_dir is None:
        return fit()
    key = cache_key({"kind": kind, "data": content_hash(images), "seed": context.seed, **parameters})
    payload, _ = cached(context.cache_dir / "defenses" / f"{kind}-{key}.pt", key, fit)
    return payload


def random_patches(images: torch.Tensor, patch_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` patches (count, C, p, p) cut at uniformly random positions of random images."""
    n, channels, height, width = images.shape
    which = torch.randint(n, (count,), generator=generator)
    top = torch.randint(height - patch_size + 1, (count,), generator=generator)
    left = torch.randint(width - patch_size + 1, (count,), generator=generator)
    offsets = torch.arange(patch_size)
    rows = (top[:, None] + offsets)[:, :, None].expand(count, patch_size, patch_size)
    cols = (left[:, None] + offsets)[:, None, :].expand(count, patch_size, patch_size)
    return images[which[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()
