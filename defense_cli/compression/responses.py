"""Sampled output responses of one layer: the columns y_i of Y (`000_...` section 2.3.3, 2.6).

The same random (image, position) points are read from the reference model (Y), from the
approximated model before the layer is replaced (Y_hat, the asymmetric target) and after (to
measure the approximation error), so all three matrices line up column by column. A forward pass
stops at the layer (no compute is spent on the layers after it).
"""

from __future__ import annotations

import torch
from torch import nn

from defense_cli.compression.network import get_module


class _Reached(Exception):
    """Raised by the hook to end a forward pass at the sampled layer."""


class ResponseSampler:
    """Reads `samples` random response points of a layer from `images` (N, C, H, W) float in [0, 1]."""

    def __init__(self, images: torch.Tensor, samples: int, batch_size: int, seed: int) -> None:
        self.images = images
        self.samples = samples
        self.batch_size = batch_size
        self.seed = seed
        self._points: dict[tuple, torch.Tensor] = {}

    def points(self, out_shape: tuple[int, int, int]) -> torch.Tensor:
        """Sorted flat indices into (image, row, col) of the sampled points, fixed per output shape."""
        key = tuple(out_shape)
        if key not in self._points:
            total = len(self.images) * out_shape[1] * out_shape[2]
            generator = torch.Generator().manual_seed(self.seed)
            self._points[key] = torch.randperm(total, generator=generator)[: self.samples].sort().values
        return self._points[key]

    @torch.no_grad()
    def collect(self, model: nn.Module, path: str, out_shape: tuple[int, int, int]) -> torch.Tensor:
        """The layer's responses at the sampled points, as an (n x points) matrix on the model's device."""
        points = self.points(out_shape)
        per_image = out_shape[1] * out_shape[2]
        device = next(model.parameters()).device
        captured: list[torch.Tensor] = []

        def hook(module, inputs, output):
            captured.append(output)
            raise _Reached

        handle = get_module(model, path).register_forward_hook(hook)
        model.eval()
        columns = []
        try:
            for start in range(0, len(self.images), self.batch_size):
                stop = min(start + self.batch_size, len(self.images))
                chosen = points[(points >= start * per_image) & (points < stop * per_image)] - start * per_image
                if len(chosen) == 0:
                    continue
                captured.clear()
                try:
                    model(self.images[start:stop].to(device))
                except _Reached:
                    pass
                flat = captured[0].permute(1, 0, 2, 3).reshape(out_shape[0], -1)
                columns.append(flat[:, chosen.to(device)])
        finally:
            handle.remove()
        return torch.cat(columns, dim=1)
