"""The benchmark's straightforward references agree with the batched defenses on the same draw."""

from __future__ import annotations

import pytest
import torch

from defense_cli.bench.references import reference_generator, references
from defense_cli.config import compose_group_option
from defense_cli.defenses import build_defense


@pytest.mark.parametrize("option, tolerance", [
    ("splic", 1e-8), ("srf", 1e-8), ("menet_usvt", 1e-10), ("menet_softimpute", 1e-8), ("menet", 1e-3),
])
def test_reference_matches_defense_in_float64(option, tolerance):
    images = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    defense = build_defense(compose_group_option("defense", option))
    ours = defense(images, reference_generator(images.device))
    theirs = references()[option](images, defense)
    assert (ours - theirs).pow(2).mean().sqrt() < tolerance


def test_splic_reference_matches_in_separate_channel_mode():
    from omegaconf import OmegaConf

    images = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cfg = OmegaConf.merge(compose_group_option("defense", "splic"), {"channel_mode": "separate"})
    defense = build_defense(cfg)
    ours = defense(images, reference_generator(images.device))
    theirs = references()["splic"](images, defense)
    assert (ours - theirs).pow(2).mean().sqrt() < 1e-8
