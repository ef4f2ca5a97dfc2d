"""How many classifier evaluations one image of a model's forward pass costs."""

from __future__ import annotations

from torch import nn


def draws_per_call(model: nn.Module) -> int:
    """The EOT samples a forward pass of `model` averages (its `draws_per_call`), else 1; wrappers
    pass the figure of the model they wrap through."""
    return getattr(model, "draws_per_call", 1)
