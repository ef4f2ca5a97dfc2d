"""The defense benchmark builds the classifier that R-CAM guided defenses need from its config."""

from __future__ import annotations

import torch

from defense_cli.bench.defenses import bench_classifier_config
from defense_cli.config import compose_group_option
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.models.factory import build_classifier


def test_bench_classifier_config_builds_a_cam_classifier_that_guides_pixel_deflection():
    model = build_classifier(bench_classifier_config(), compose_group_option("dataset", "cifar10_jpeg")).eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert model(images).shape == (4, 10)
    defense = build_defense(compose_group_option("defense", "pixel_deflection"))
    defense.prepare(DefenseContext(classifier=model))
    defended = defense(images, torch.Generator().manual_seed(0))
    assert defended.shape == images.shape and not torch.equal(defended, images)
