"""LRC-HSP defense (000_1720f31fb7e6036a.txt ch. 3): keypoint mask (eq. 3.10), contract, bad input."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from defense_cli.config import compose_group_option
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.defenses.lrc_hsp import LRCHSP, keypoint_mask
from defense_cli.models import build_classifier

FAST = {"inner_iterations": 60, "outer_iterations": 2, "ialm_iterations": 40, "smoothing_iterations": 20}


def tiny_cnn(channels: int = 3) -> nn.Module:
    dataset = OmegaConf.create({"channels": channels, "num_classes": 10, "mean": [0.5] * channels,
                                "std": [0.25] * channels})
    torch.manual_seed(0)
    return build_classifier(OmegaConf.create({"name": "small_cnn", "_target_": "defense_cli.models.architectures.small_cnn", "width": 4}), dataset).eval()


def images(batch: int = 2, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.linspace(0.2, 0.8, size).expand(batch, channels, size, size)
    return (smooth + 0.1 * torch.rand(batch, channels, size, size, generator=g)).clamp(0, 1)


def defense(**overrides) -> LRCHSP:
    d = LRCHSP(**{**FAST, **overrides})
    d.prepare(DefenseContext(classifier=tiny_cnn()))
    return d


class LinearTwoClass(nn.Module):
    """logits = W x: the input gradient of the cross-entropy is (p - onehot) W, so its size per pixel
    is proportional to |w_1 - w_0| summed over channels in L2 (known in advance)."""

    def __init__(self, difference: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.stack([torch.zeros_like(difference), difference]).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def test_keypoints_are_the_pixels_of_largest_known_gradient():
    g = torch.Generator().manual_seed(3)
    difference = 0.01 * torch.rand(3, 16, 16, generator=g)
    chosen = torch.randperm(256, generator=g)[:13]        # round(0.05 * 256) = 13
    difference.view(3, -1)[1, chosen] = 1.0
    mask = keypoint_mask(LinearTwoClass(difference), images(2), share=0.05)
    expected = torch.zeros(256, dtype=torch.bool)
    expected[chosen] = True
    assert mask.shape == (2, 1, 16, 16)
    assert torch.equal(mask[0, 0].flatten(), expected) and torch.equal(mask[1, 0].flatten(), expected)


@pytest.mark.parametrize("share, count", [(0.05, 13), (0.1, 26), (0.5, 128), (1.0, 256)])
def test_keypoint_mask_selects_exactly_the_requested_share(share, count):
    mask = keypoint_mask(tiny_cnn(), images(3), share)
    assert mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [count] * 3


def test_keypoints_work_under_no_grad_and_leave_parameters_untouched():
    model = tiny_cnn()
    with torch.no_grad():
        mask = keypoint_mask(model, images(1), 0.1, label="least_likely")
    assert mask.sum() == 26
    assert all(p.grad is None for p in model.parameters())


def test_output_contract_and_determinism():
    d = defense()
    x = images(2)
    out = d(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, d(x))
    assert not torch.equal(out, x)


def test_keypoints_come_from_the_completion_and_the_rest_is_smoothed():
    d = defense(smoothing_weight=0.0)                      # weight 0: the smoothing is the identity
    x = images(2)
    out = d(x)
    keypoints = d.keypoints(x).expand_as(x)
    assert torch.equal(out[~keypoints], x[~keypoints])
    assert not torch.equal(out[keypoints], x[keypoints])


def test_one_image_gives_the_same_result_alone_or_in_a_batch():
    d = defense()
    x = images(3)
    assert torch.allclose(d(x)[1:2], d(x[1:2]), atol=1e-5)


def test_gray_images_and_float64():
    d = LRCHSP(**FAST)
    d.prepare(DefenseContext(classifier=tiny_cnn(channels=1).double()))
    x = images(1, channels=1).double()
    out = d(x)
    assert out.dtype == torch.float64 and out.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    d = LRCHSP(**FAST)
    d.prepare(DefenseContext(classifier=tiny_cnn().cuda()))
    x = images(2).cuda()
    out = d(x)
    assert out.device == x.device
    assert torch.allclose(out.cpu(), defense()(x.cpu()), atol=1e-3)


@pytest.mark.parametrize("bad, name", [(torch.rand(3, 16, 16), "4-D"), (torch.rand(1, 3, 8, 8) + 1, r"\[0, 1\]"),
                                       (torch.full((1, 3, 8, 8), float("nan")), "NaN")])
def test_bad_images_raise(bad, name):
    with pytest.raises(ValueError, match=name):
        defense()(bad)


@pytest.mark.parametrize("kwargs, name", [({"keypoint_share": 0.0}, "keypoint_share"),
                                          ({"keypoint_share": 1.5}, "keypoint_share"),
                                          ({"keypoint_label": "target"}, "keypoint_label"),
                                          ({"smoothing_weight": -1.0}, "smoothing_weight"),
                                          ({"eta": -0.2}, "eta"), ({"rank": 3}, "rank")])
def test_bad_parameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LRCHSP(**kwargs)


def test_missing_classifier_raises():
    d = LRCHSP()
    with pytest.raises(ValueError, match="classifier"):
        d(images(1))
    with pytest.raises(ValueError, match="classifier"):
        d.prepare(DefenseContext())


def test_config_builds_the_paper_defaults():
    d = build_defense(compose_group_option("defense", "lrc_hsp"))
    assert isinstance(d, LRCHSP) and d.needs_classifier and not d.randomized
    assert d.keypoint_share == 0.05 and d.rlkc_params.lam == 8.0 and d.rlkc_params.eta == 0.2
