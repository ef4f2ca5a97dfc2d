"""Images as matrices for the completion defenses: RGB channels side by side or one by one.

`concat` (ME-Net, `003_b8a380e28ee315f5.txt` section 2.3: "jointly by concatenating them into one
matrix") turns a (B, C, H, W) batch into (B, 1, H, C*W); `separate` into (B, C, H, W), each
channel its own matrix. Both are views/reshapes, undone exactly by `to_images`.
"""

from __future__ import annotations

import torch

CHANNEL_MODES = ("concat", "separate")


def to_matrices(images: torch.Tensor, channel_mode: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, K, m, n) with K = 1, n = C*W (concat) or K = C, n = W (separate)."""
    if channel_mode == "separate":
        return images
    batch, channels, height, width = images.shape
    return images.permute(0, 2, 1, 3).reshape(batch, 1, height, channels * width)


def to_images(matrices: torch.Tensor, channel_mode: str, channels: int) -> torch.Tensor:
    """Inverse of `to_matrices`."""
    if channel_mode == "separate":
        return matrices
    batch, _, height, wide = matrices.shape
    return matrices.reshape(batch, height, channels, wide // channels).permute(0, 2, 1, 3).contiguous()

