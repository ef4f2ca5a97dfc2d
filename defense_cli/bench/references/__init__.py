"""Simple per-image reference versions of defenses, run beside the real ones in `bench defenses`.

Each module here registers functions with `@reference("<defense option>")`. A reference takes the
batch and the configured defense (to read its parameters) and returns the defended batch, doing
the work the straightforward way (a Python loop over images, numpy, a generic solver...), so the
benchmark prints how much faster the project's batched version is on the same images.

A reference of a randomized defense draws its random masks from `reference_generator(device)`
the same way the defense does, so the benchmark can compare both outputs on the same draw.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

import torch

from defense_cli.defenses import Defense

ReferenceFn = Callable[[torch.Tensor, Defense], torch.Tensor]
REFERENCE_SEED = 0
_REFERENCES: dict[str, ReferenceFn] = {}


def reference(defense_option: str) -> Callable[[ReferenceFn], ReferenceFn]:
    """Register `fn` as the reference implementation of `defense=<defense_option>`."""

    def register(fn: ReferenceFn) -> ReferenceFn:
        _REFERENCES[defense_option] = fn
        return fn

    return register


def references() -> dict[str, ReferenceFn]:
    """All registered references (imports every module of this package once)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(_REFERENCES)


def reference_generator(device: torch.device) -> torch.Generator:
    """The generator with which references and the benchmark draw a randomized defense's masks."""
    return torch.Generator(device=device).manual_seed(REFERENCE_SEED)
