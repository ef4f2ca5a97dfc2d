"""A chain of defenses applied in order, each step receiving the previous step's output.

The steps are built defenses: from the config, Hydra composes each step as a nested defense node
(`conf/defense/chain.yaml`) and `build_defense` builds them before the chain.

The papers combine transformations (`002_fc3b45851f5789b0.txt` ch. 4, Tables 4.7-4.8: pixel
deflection with wavelet denoising and JPEG). Under white-box attack the chain is approximated step
by step with BPDA (`defense_cli.attacks.bpda.bpda`): each step's surrogate (the identity unless the
step defines one) is differentiated at that step's own input.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from defense_cli.defenses.base import Defense, DefenseContext


class Chain(Defense):
    """defense_k(... defense_2(defense_1(x))): a random chain when any step is random."""

    def __init__(self, steps: Sequence[Defense] | Mapping[str, Defense]) -> None:
        """`steps`: built defenses in order; a mapping (the composed `steps.<slot>` configs) is taken
        in its order."""
        ordered = list(steps.values()) if isinstance(steps, Mapping) else list(steps)
        if not ordered or not all(isinstance(step, Defense) for step in ordered):
            raise ValueError(f"steps={steps!r} must be a non-empty list of defenses")
        self.steps = ordered
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
