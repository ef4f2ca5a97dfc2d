"""Batched CIFAR-style augmentation: random translations (padded crops) and horizontal flips."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None, padding: int = 4) -> torch.Tensor:
    """Crop every image at its own random offset from a copy reflect-padded by `padding` pixels (a
    translation by up to `padding` in each direction; 0 = none); flip half of them."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator).to(images.device)
    rows = (torch.arange(height, device=images.device)[None, :] + dy)[:, None, :, None]
    cols = (torch.arange(width, device=images.device)[None, :] + dx)[:, None, None, :]
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    cropped = padded[batch_index, channel_index, rows, cols]
    flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)
