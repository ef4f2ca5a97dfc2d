"""A chain of defenses applied in order, each step receiving the previous step's output.

The papers combine transformations (`002_fc3b45851f5789b0.txt` ch. 4, Tables 4.7-4.8: pixel
deflection with wavelet denoising and JPEG). Under white-box attack the chain is approximated step
by step with BPDA (`defense_cli.attacks.bpda.bpda`): each step's surrogate (the identity unless the
step defines one) is differentiated at that step's own input.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from defense_cli.defenses.base import Defense, DefenseContext
from defense_cli.errors import ConfigError


def build_step(spec: str | dict[str, Any] | Defense) -> Defense:
    """One step from a defense option name, a mapping {name: <option>, <param overrides>}, or a
    Defense already built (from code)."""
    from defense_cli.config import compose_group_option
    from defense_cli.defenses.factory import build_defense

    if isinstance(spec, Defense):
        return spec
    name = spec if isinstance(spec, str) else (spec or {}).get("name")
    if not isinstance(name, str):
        raise ValueError(f"steps: each step must be a defense name or a mapping with 'name', got {spec!r}")
    try:
        base = compose_group_option("defense", name)
    except ConfigError as err:
        raise ValueError(f"steps: {err}") from err
    overrides = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "name"}
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"steps: defense {name!r} has no parameter {', '.join(unknown)}; "
                         f"allowed: {', '.join(k for k in base if k not in ('name', '_target_'))}")
    try:
        return build_defense(OmegaConf.merge(base, overrides))
    except ConfigError as err:
        raise ValueError(f"steps: {err}") from err


class Chain(Defense):
    """defense_k(... defense_2(defense_1(x))): a random chain when any step is random."""

    def __init__(self, steps: list[str | dict[str, Any] | Defense]) -> None:
        if not isinstance(steps, (list, tuple)) or not steps:
            raise ValueError(f"steps={steps!r} must be a non-empty list of defense names or mappings")
        self.steps = [build_step(spec) for spec in steps]
        self.randomized = any(step.randomized for step in self.steps)  # type: ignore[misc]
        self.needs_classifier = any(step.needs_classifier for step in self.steps)  # type: ignore[misc]
        self.needs_train_set = any(step.needs_train_set for step in self.steps)  # type: ignore[misc]

    def prepare(self, context: DefenseContext) -> None:
        for step in self.steps:
            step.prepare(context)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for step in self.steps:
            images = step(images, generator)
        return images

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for step in self.steps:
            images = step.surrogate(images, generator)
        return images

    @property
    def has_surrogate(self) -> bool:
        return any(step.has_surrogate for step in self.steps)

    def __repr__(self) -> str:
        return f"Chain({' -> '.join(map(repr, self.steps))})"
