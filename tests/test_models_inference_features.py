"""The folded, channels-last, chunked `features` of the CAM defenses equal the model's own features."""

import pytest
import torch

from defense_cli.models import inference_features as module
from defense_cli.models.architectures import LeNet, resnet18, small_cnn
from defense_cli.models.classifier import Classifier
from defense_cli.models.inference_features import inference_features


def _with_batch_statistics(backbone):
    """A classifier whose batch norms hold non-trivial running statistics, in eval mode."""
    torch.manual_seed(0)
    classifier = Classifier(backbone, [0.5] * 3, [0.25] * 3)
    classifier.train()
    with torch.no_grad():
        for _ in range(3):
            classifier(torch.rand(16, 3, 32, 32) * 2)
    return classifier.eval()


@pytest.mark.parametrize("backbone", [small_cnn(3, 10, width=8), resnet18(3, 10)], ids=["small_cnn", "resnet18"])
def test_equal_to_the_plain_features_up_to_rounding(backbone, monkeypatch):
    monkeypatch.setattr(module, "CPU_CHUNK", 5)   # several chunks
    classifier = _with_batch_statistics(backbone)
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = classifier.features(images)
    fast = inference_features(classifier, images)
    assert fast.shape == plain.shape
    assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())


def test_the_folded_copy_follows_weight_updates():
    classifier = _with_batch_statistics(small_cnn(3, 10, width=8))
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = inference_features(classifier, images)
    with torch.no_grad():
        next(classifier.parameters()).mul_(-1)   # an in-place update, as an optimiser step makes
        plain = classifier.features(images)
    after = inference_features(classifier, images)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, plain, atol=1e-4 * plain.abs().max().item())


def test_training_mode_uses_the_model_itself():
    classifier = _with_batch_statistics(small_cnn(3, 10, width=8)).train()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = classifier.features(images)
    assert torch.equal(inference_features(classifier, images), expected)


def test_a_model_without_cam_features_is_named():
    with pytest.raises(ValueError, match="LeNet"):
        inference_features(Classifier(LeNet(3, 10), [0.5] * 3, [0.25] * 3).eval(), torch.rand(1, 3, 32, 32))
