"""Every architecture builds for 1- and 3-channel inputs; CAM-capable ones expose features + head."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from defense_cli.config import compose, group_options
from defense_cli.errors import ConfigError
from defense_cli.models import build_classifier


#: compressed, saved and custom need a file or an import path of the user (tests/test_models_checkpoints.py)
TRAINABLE = [m for m in group_options("model") if m not in ("compressed", "saved", "custom")]


@pytest.mark.parametrize("model", TRAINABLE)
@pytest.mark.parametrize(("dataset", "size"), [("mnist5k", 28), ("cifar10", 32)])
def test_architecture_outputs_logits(model, dataset, size):
    cfg = compose([f"model={model}", f"dataset={dataset}"])
    classifier = build_classifier(cfg.model, cfg.dataset).eval()
    x = torch.rand(2, cfg.dataset.channels, size, size)
    assert classifier(x).shape == (2, 10)
    if classifier.supports_cam:
        features = classifier.features(x)
        assert features.ndim == 4 and features.shape[1] == classifier.head.in_features
        pooled = classifier.head(features.mean(dim=(2, 3)))
        assert torch.allclose(pooled, classifier(x), atol=1e-5)


def test_normalisation_is_inside_the_model():
    cfg = compose()
    classifier = build_classifier(cfg.model, cfg.dataset)
    x = torch.full((1, 1, 2, 2), 0.1307)
    assert torch.allclose(classifier.normalize(x), torch.zeros_like(x), atol=1e-6)


def test_lenet_has_no_cam_and_says_so():
    cfg = compose(["model=lenet"])
    classifier = build_classifier(cfg.model, cfg.dataset)
    assert not classifier.supports_cam
    with pytest.raises(ValueError, match="class activation maps"):
        classifier.features(torch.rand(1, 1, 28, 28))


def test_unknown_architecture_is_a_config_error():
    cfg = compose()
    with pytest.raises(ConfigError, match="model.name"):
        build_classifier(OmegaConf.create({"name": "alexnet"}), cfg.dataset)
