"""The contract every defense keeps, checked for every option of the `defense` config group (a new
defense is covered the moment its YAML file exists): shape, dtype, device and [0, 1] range kept;
NaN and out-of-range input refused with a ValueError naming the input; the same seed gives the same
output; a defense whose output changes with the seed declares `randomized = True` (else it would
silently get no EOT); `surrogate`, when defined, has the forward's shape and a finite gradient."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from defense_cli.config import compose, group_options
from defense_cli.data import ImageSet
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.models import build_classifier

DATASET = OmegaConf.create({"channels": 3, "num_classes": 10, "image_size": 32,
                            "mean": [0.5] * 3, "std": [0.25] * 3})


def images(seed: int = 0, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


#: options whose fitting or iterations take more than a few seconds on 2 CPU cores (end-to-end tier)
SLOW = {"stl", "stl_stratified", "menet", "menet_softimpute", "menet_usvt", "splic", "srf", "lrc_hsp"}
OPTIONS = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
           for name in sorted(group_options("defense"))]


@pytest.fixture(scope="module", params=OPTIONS)
def defense(request, tmp_path_factory):
    built = build_defense(compose([f"defense={request.param}"]).defense)
    torch.manual_seed(0)
    model_cfg = compose(["model=small_cnn", "model.width=4"]).model
    train = ImageSet((torch.rand(32, 3, 32, 32) * 255).to(torch.uint8), torch.arange(32) % 10)
    built.prepare(DefenseContext(classifier=build_classifier(model_cfg, DATASET).eval(), train_set=train,
                                 cache_dir=tmp_path_factory.mktemp("cache"), seed=0))
    return built


def test_shape_dtype_device_and_range_are_kept(defense):
    x = images()
    out = defense(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.5])
def test_nan_and_out_of_range_input_is_refused_naming_it(defense, bad):
    x = images()
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="images"):
        defense(x, torch.Generator().manual_seed(0))


def test_same_seed_same_output_and_seed_dependence_is_declared(defense):
    x = images()
    first = defense(x, torch.Generator().manual_seed(1))
    again = defense(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    other = defense(x, torch.Generator().manual_seed(2))
    if not torch.equal(first, other):
        assert defense.randomized, f"{type(defense).__name__} changes with the seed but is not randomized"


def test_surrogate_has_the_forward_shape_and_a_finite_gradient(defense):
    if not defense.has_surrogate:
        pytest.skip(f"{type(defense).__name__} defines no surrogate")
    x = images().requires_grad_(True)
    out = defense.surrogate(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    (gradient,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(gradient).all()
