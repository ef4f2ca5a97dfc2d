"""Semantic JPEG (Aug-MSROI): block qualities follow the saliency map; CAM saliency; validation."""

import pytest
import torch
from torch import nn

from defense_cli.defenses import DefenseContext
from defense_cli.defenses.jpeg import jpeg_roundtrip
from defense_cli.defenses.semantic_jpeg import (
    SemanticJPEG, aug_msroi_saliency, level_qualities, per_item_std, saliency_levels, semantic_jpeg, translate)
from defense_cli.image_quality import psnr
from defense_cli.models.architectures import GapHeadNet, LeNet, small_cnn
from defense_cli.models.classifier import Classifier


def _textured(batch=2, channels=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, size // 4, size // 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.7 * smooth + 0.3 * torch.rand(batch, channels, size, size, generator=g)).clamp(0, 1)


def _brightness_classifier(channels=1):
    """features = the image itself; class 0 scores brightness, class 1 darkness: CAM_0 = the image."""
    net = GapHeadNet(nn.Identity(), channels, 2)
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor([[1.0] * channels, [-1.0] * channels]))
        net.head.bias.zero_()
    return Classifier(net, [0.0] * channels, [1.0] * channels).eval()


def test_eq_2_7_and_inclusive_qualities():
    assert level_qualities(30, 70, 5, "equation") == [30, 38, 46, 54, 62]
    assert level_qualities(30, 70, 5, "inclusive") == [30, 40, 50, 60, 70]
    assert level_qualities(50, 50, 1, "inclusive") == [50]


def test_levels_follow_section_2_4_intervals():
    values = torch.tensor([0.0, 0.2, 0.21, 0.4, 0.41, 0.99, 1.0])
    saliency = values.repeat_interleave(8)[None, None, None, :].expand(1, 1, 8, -1)
    assert saliency_levels(saliency, 5).flatten().tolist() == [0, 0, 1, 1, 2, 4, 4]


def test_salient_blocks_have_higher_psnr_than_non_salient_blocks():
    images = _textured()
    saliency = torch.zeros(2, 1, 32, 32)
    saliency[:, :, :, :16] = 1.0
    out = semantic_jpeg(images, saliency, level_qualities(10, 95, 5, "inclusive"), 95)
    salient = psnr(images[..., :16], out[..., :16])
    background = psnr(images[..., 16:], out[..., 16:])
    assert (salient > background + 3).all()


def test_uniform_saliency_is_double_jpeg_at_that_level():
    images = _textured(seed=1)
    saliency = torch.full((2, 1, 32, 32), 0.5)
    qualities = level_qualities(30, 70, 5, "equation")
    expected = jpeg_roundtrip(jpeg_roundtrip(images, qualities[2]), 60)
    assert torch.equal(semantic_jpeg(images, saliency, qualities, 60), expected)


def test_translate_moves_pixels_by_integer_offsets():
    image = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5).repeat(2, 1, 1, 1)
    out = translate(image, torch.tensor([[1, 2], [0, -1]]))
    assert torch.equal(out[0, 0, :4, :3], image[0, 0, 1:, 2:])
    assert torch.equal(out[1, 0, :, 1:], image[1, 0, :, :4])


def test_cam_saliency_favours_the_object_region():
    images = torch.full((2, 1, 16, 16), 0.1)
    images[:, :, 4:10, 5:11] = 0.9
    saliency = aug_msroi_saliency(_brightness_classifier(), images, augmentations=4, jitter=1, image_noise=0.01,
                                  feature_noise=0.05, top_classes=2, generator=torch.Generator().manual_seed(0))
    assert saliency.shape == (2, 1, 16, 16)
    assert saliency.min() >= 0 and saliency.max() <= 1 + 1e-6
    assert (saliency[:, :, 5:9, 6:10].mean() > 3 * saliency[:, :, 12:, 12:].mean())


def _defense(**kwargs):
    torch.manual_seed(0)
    defense = SemanticJPEG(**kwargs)
    defense.prepare(DefenseContext(classifier=Classifier(small_cnn(3, 10, width=8), [0.5] * 3, [0.25] * 3)))
    return defense


def test_shape_range_dtype_and_seed():
    defense = _defense()
    images = _textured(batch=3, seed=2)
    first = defense(images, torch.Generator().manual_seed(5))
    again = defense(images, torch.Generator().manual_seed(5))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    saliency = defense.saliency(images, torch.Generator().manual_seed(5))
    other = defense.saliency(images, torch.Generator().manual_seed(6))
    assert not torch.equal(saliency, other)


def test_non_multiple_of_eight_and_grayscale():
    defense = SemanticJPEG()
    defense.prepare(DefenseContext(classifier=_brightness_classifier()))
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    out = defense(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_output_stays_on_device():
    defense = SemanticJPEG()
    defense.prepare(DefenseContext(classifier=_brightness_classifier(3).cuda()))
    images = _textured().cuda()
    out = defense(images, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == images.device


@pytest.mark.parametrize("kwargs, name", [
    ({"quality_low": 0}, "quality_low"), ({"quality_high": 101}, "quality_high"),
    ({"final_quality": 0}, "final_quality"), ({"quality_low": 80}, "quality_low"),
    ({"levels": 0}, "levels"), ({"quality_spacing": "log"}, "quality_spacing"),
    ({"augmentations": 0}, "augmentations"), ({"jitter": -1}, "jitter"),
    ({"image_noise": -0.1}, "image_noise"), ({"top_classes": 0}, "top_classes"),
])
def test_bad_parameters_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SemanticJPEG(**kwargs)


def test_model_without_cam_features_and_missing_classifier_are_errors():
    with pytest.raises(ValueError, match="CAM"):
        SemanticJPEG().prepare(DefenseContext(classifier=Classifier(LeNet(1, 10), [0.0], [1.0])))
    with pytest.raises(ValueError, match="classifier"):
        SemanticJPEG().prepare(DefenseContext())
    with pytest.raises(ValueError, match="prepare"):
        SemanticJPEG()(torch.rand(1, 3, 8, 8))


def test_config_builds_the_defense():
    from defense_cli.config import compose_group_option
    from defense_cli.defenses import build_defense

    defense = build_defense(compose_group_option("defense", "semantic_jpeg"))
    assert isinstance(defense, SemanticJPEG) and defense.needs_classifier and defense.randomized
    assert defense.qualities == [30, 38, 46, 54, 62]


def test_per_item_std_is_the_sample_standard_deviation():
    values = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 5)[:, None, None, None]
    assert torch.allclose(per_item_std(values), values.flatten(1).std(1), rtol=1e-5)


def test_output_does_not_depend_on_the_thread_count_or_on_chunking():
    defense = _defense()
    images = _textured(batch=19, seed=4)  # several chunks, spread over threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        spread = defense(images, torch.Generator().manual_seed(7))
        torch.set_num_threads(1)
        serial = defense(images, torch.Generator().manual_seed(7))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(spread, serial)
    assert torch.get_num_threads() == threads
    saliency = defense.saliency(images, torch.Generator().manual_seed(7))
    expected = semantic_jpeg(images, saliency, defense.qualities, defense.final_quality)
    assert torch.equal(spread, expected)
