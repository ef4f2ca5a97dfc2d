"""Decomposing conv layers inside a model: exact recovery, eq. 2.7 cost, selection, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from defense_cli.compression.cost import lowrank_macs
from defense_cli.compression.decompose import apply_structure, decompose_model, structure_of
from defense_cli.compression.settings import CompressSettings
from defense_cli.errors import ConfigError

RANK = 3


def _settings(**changes) -> CompressSettings:
    base = CompressSettings(method="l1_lrar", rank=0.5, layer_ranks={}, layers=None, stage=None,
                            procedure="sequential", images=24, samples=3000, batch_size=8, seed=0,
                            solver={"tol": 1e-7, "max_iter": 300}, finetune={"epochs": 0}, latency={"repeats": 1})
    return dataclasses.replace(base, **changes)


def _subspace_model() -> nn.Sequential:
    """conv1 -> conv2 (+BN) -> conv3, where conv2's 8 filters are combinations of 3 separable ones,
    so its responses lie in a 3-dimensional (affine) subspace and its kernel has VH rank 3."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                          nn.Conv2d(8, 5, 3, stride=2, padding=1))
    basis = torch.einsum("jcy,jx->jcyx", torch.randn(RANK, 4, 3, generator=g), torch.randn(RANK, 3, generator=g))
    with torch.no_grad():
        model[2][0].weight.copy_(torch.einsum("nj,jcyx->ncyx", torch.randn(8, RANK, generator=g), basis))
        model[2][1].running_mean.uniform_(-1, 1, generator=g)
        model[2][1].running_var.uniform_(0.5, 2, generator=g)
    return model.eval()


def _images(count: int = 24) -> torch.Tensor:
    return torch.rand(count, 3, 10, 10, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["l1_lrar", "nl2a", "vh2"])
def test_subspace_conv_is_decomposed_at_rank_m_with_near_zero_error(method):
    model, images = _subspace_model(), _images()
    result = decompose_model(model, images, _settings(method=method, layer_ranks={"conv2": RANK}))
    (report,) = result.reports
    assert report.name == "conv2" and report.filters == 8
    assert report.linear_error < 1e-4 and report.nonlinear_error < 1e-4
    with torch.no_grad():
        assert torch.allclose(result.model(images), model(images), atol=1e-4)
    assert isinstance(result.model[2][1], nn.Identity)  # BN folded into the decomposed conv
    if method != "vh2":
        assert report.rank == RANK
        assert report.macs_after == lowrank_macs(8, RANK, 4, 3, 3, 10, 10)
        assert report.remain_ratio == pytest.approx(lowrank_macs(8, RANK, 4, 3, 3, 10, 10) / (8 * 100 * 36))


def test_a_lower_rank_has_error_and_the_structure_rebuilds_the_same_model():
    model, images = _subspace_model(), _images()
    result = decompose_model(model, images, _settings(layer_ranks={"conv2": 1}))
    assert result.reports[0].linear_error > 1e-2
    rebuilt = apply_structure(_subspace_model(), structure_of(result))
    rebuilt.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(images), result.model(images))


def test_default_layers_skip_first_and_last_and_stage_selects_by_output_size():
    model, images = _subspace_model(), _images()
    assert [r.name for r in decompose_model(model, images, _settings()).reports] == ["conv2"]
    assert [r.name for r in decompose_model(model, images, _settings(stage=2)).reports] == ["conv3"]


def test_bad_input_names_the_value():
    model, images = _subspace_model(), _images()
    with pytest.raises(ConfigError, match=r"compress.rank=1.5"):
        _settings(rank=1.5).check()
    with pytest.raises(ConfigError, match=r"compress.rank=0"):
        _settings(rank=0).check()
    with pytest.raises(ConfigError, match="'conv9'"):
        decompose_model(model, images, _settings(layers=["conv9"]))
    with pytest.raises(ConfigError, match="no conv layers"):
        decompose_model(nn.Sequential(nn.Flatten(), nn.Linear(300, 2)), images, _settings())
    with pytest.raises(ValueError, match="4 sampled response points"):
        decompose_model(model, images, _settings(samples=4))
    with pytest.raises(ConfigError, match="compress.stage=7"):
        decompose_model(model, images, _settings(stage=7))


def test_vh2_matches_the_macs_of_the_lowrank_layer_it_is_compared_with():
    model, images = _subspace_model(), _images()
    lowrank = decompose_model(model, images, _settings(layers=["conv3"], rank=0.5)).reports[0]
    vh2 = decompose_model(model, images, _settings(method="vh2", layers=["conv3"], rank=0.5)).reports[0]
    per_filter = 8 * 3 * 5 * 10 + 5 * 3 * 5 * 5  # vertical on 5 x 10 positions, horizontal on 5 x 5
    assert vh2.macs_after == vh2.rank * per_filter
    assert abs(vh2.macs_after - lowrank.macs_after) <= per_filter / 2


def test_by_default_the_first_and_last_conv_are_kept():
    """000 section 2.6.2: small_cnn's convs are conv1-conv3, so `compress.rank=0.25` decomposes conv2 alone."""
    from defense_cli.compression.network import conv_layers, select_layers
    from defense_cli.config import compose
    from defense_cli.models import build_classifier

    cfg = compose(["model=small_cnn"])
    layers = conv_layers(build_classifier(cfg.model, cfg.dataset), (1, 28, 28))
    assert [layer.name for layer in layers] == ["conv1", "conv2", "conv3"]
    assert [layer.name for layer in select_layers(layers, None, None)] == ["conv2"]
    assert [layer.name for layer in select_layers(layers, ["conv2", "conv3"], None)] == ["conv2", "conv3"]
