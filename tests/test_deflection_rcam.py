"""R-CAM (002 ch. 4, section 4.6.1, eq. 4.4-4.5): range, object localisation on a hand-built model,
the top-k weighting, and the error for a model without CAM features."""

import pytest
import torch
from torch import nn

from defense_cli.defenses import DefenseContext
from defense_cli.defenses.pixel_deflection import PixelDeflection
from defense_cli.defenses.rcam import normalise_map, robust_activation_map
from defense_cli.models.architectures import GapHeadNet, LeNet, small_cnn
from defense_cli.models.classifier import Classifier


def _brightness_model(class_weights):
    """features = the image's mean brightness per pixel (one channel); class c's CAM weight class_weights[c]."""
    features = nn.Conv2d(3, 1, 1, bias=False)
    features.weight.data.fill_(1 / 3)
    net = GapHeadNet(features, 1, len(class_weights))
    net.head.weight.data = torch.tensor(class_weights, dtype=torch.float32).view(-1, 1)
    net.head.bias.data.zero_()
    return Classifier(net, mean=[0, 0, 0], std=[1, 1, 1]).eval()


def test_known_answer_of_eq_4_5_on_a_one_channel_feature_map():
    model = _brightness_model([2.0, 1.0, -1.0])
    image = torch.zeros(1, 3, 4, 4)
    image[0, :, 1, 2] = 0.9
    image[0, :, 3, 0] = 0.3
    # top-2 classes are 0 and 1 (positive weights); M = (2/2 + 1/4) * f = 1.25 f, min-max normalised -> f / 0.9
    expected = image[0, 0] / 0.9
    assert torch.allclose(robust_activation_map(model, image, top_k=2)[0], expected, atol=1e-6)


def test_probabilities_are_in_unit_range_and_favour_the_object_region():
    model = _brightness_model([1.0, 0.5])
    images = torch.full((2, 3, 16, 16), 0.1)
    images[0, :, 2:8, 3:9] = 0.9  # the "object"
    images[1, :, 9:15, 8:14] = 0.8
    maps = robust_activation_map(model, images, top_k=5)
    assert maps.shape == (2, 16, 16)
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps[0, 3:7, 4:8].min() > 0.9 and maps[0, 10:, :6].max() < 0.1
    assert maps[1, 10:14, 9:13].min() > 0.9 and maps[1, :6, :6].max() < 0.1


def test_map_is_resized_to_the_image_and_constant_maps_give_zero():
    maps = torch.tensor([[[0.0, 2.0], [4.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    out = normalise_map(maps, (4, 4))
    assert out.shape == (2, 4, 4)
    assert out[0, 0, 0] == 0 and out[0, -1, -1] == 1
    assert torch.equal(out[1], torch.zeros(4, 4))


def test_real_small_cnn_gives_a_valid_map():
    torch.manual_seed(0)
    model = Classifier(small_cnn(3, 10, width=8), mean=[0.5] * 3, std=[0.25] * 3).eval()
    maps = robust_activation_map(model, torch.rand(3, 3, 32, 32), top_k=5)
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1


def test_a_model_without_features_and_head_is_refused_by_name():
    lenet = Classifier(LeNet(3, 10), mean=[0] * 3, std=[1] * 3)
    defense = PixelDeflection()
    with pytest.raises(ValueError, match="LeNet"):
        defense.prepare(DefenseContext(classifier=lenet))
    with pytest.raises(ValueError, match="LeNet"):
        robust_activation_map(lenet, torch.rand(1, 3, 32, 32))


def test_rcam_protects_the_object_in_the_full_defense():
    model = _brightness_model([1.0])
    images = torch.zeros(50, 3, 32, 32)
    images[:, :, :16] = torch.rand(50, 3, 16, 32, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.8
    images[:, :, 16:] = torch.rand(50, 3, 16, 32, generator=torch.Generator().manual_seed(1)) * 0.2
    defense = PixelDeflection(deflections=300, window=3, reference_size=None, denoise=False)
    defense.prepare(DefenseContext(classifier=model))
    out = defense(images, torch.Generator().manual_seed(2))
    changed = (out != images).any(1)
    assert changed[:, 16:].sum() > 5 * changed[:, :16].sum()
