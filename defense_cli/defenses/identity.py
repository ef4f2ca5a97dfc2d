"""The `none` defense."""

from __future__ import annotations

import torch

from defense_cli.defenses.base import Defense


class NoDefense(Defense):
    """The identity: returns the images unchanged (a copy)."""

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return images.clone()
