"""Differentiable BPDA surrogates (`Defense.surrogate`): forward close to the real defense on real
images, gradients that match finite differences (float64, small cases), the forward's own random
draws replayed by `bpda`, and surrogate-BPDA PGD end to end through the CLI."""

from __future__ import annotations

import pytest
import torch

from torch import nn

from attack_helpers import fast_attack, fit
from completion_fixtures import real_image
from conftest import run_cli, runs_in
from defense_cli.attacks.bpda import DefendedClassifier, bpda
from defense_cli.config import compose
from defense_cli.data import load_dataset
from defense_cli.defenses import differentiable_jpeg
from defense_cli.defenses.factory import build_defense
from defense_cli.defenses.lowrank_linalg import GuardedEigh
from defense_cli.defenses.smoothed_rank import CompletionSettings, complete, refine
from defense_cli.defenses.squeezing import MedianSmoothing

#: Largest mean and largest single |surrogate(x) - defense(x)| allowed, in 1/255 pixel units, on the
#: first 4 mnist5k test images with the configs' defaults (measured: docs/attacks.md, "Surrogates").
FORWARD_TOLERANCE = {
    "wavelet": (1e-4, 1e-3), "pd_wavelet": (1e-4, 1e-3), "tvm": (1e-4, 1e-3), "menet_usvt": (1e-4, 1e-3),
    "menet_softimpute": (0.1, 10.0), "menet": (0.2, 10.0), "srf": (1.0, 40.0), "splic": (1.0, 40.0),
    "jpeg": (1.0, 20.0),
}


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset(compose().dataset).test.float_images(slice(0, 4))


def defense(name: str, *overrides: str):
    return build_defense(compose([f"defense={name}", *(f"defense.{o}" for o in overrides)]).defense)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(FORWARD_TOLERANCE))
def test_surrogate_forward_is_close_to_the_defense(name, digits):
    d = defense(name)
    assert d.has_surrogate
    real = d(digits, seeded())
    with torch.no_grad():
        approx = d.surrogate(digits, seeded())
    error = (approx - real).abs() * 255
    mean_tolerance, max_tolerance = FORWARD_TOLERANCE[name]
    assert error.mean() <= mean_tolerance and error.max() <= max_tolerance
    assert error.mean() < (real - digits).abs().mean() * 255          # closer to the defense than x is


@pytest.mark.parametrize("name", ["jpeg", "menet"])
def test_surrogate_forward_is_close_on_a_colour_image(name):
    image = real_image(32).float()
    d = defense(name)
    real = d(image, seeded())
    with torch.no_grad():
        approx = d.surrogate(image, seeded())
    assert (approx - real).abs().mean() * 255 <= FORWARD_TOLERANCE[name][0] * 3
    assert (approx - real).abs().mean() < (real - image).abs().mean()


@pytest.mark.parametrize("name", ["splic", "menet", "tvm", "pd_wavelet"])
def test_bpda_replays_the_forward_draws_for_the_surrogate(name, digits):
    """Forward of bpda = the defense bit for bit; the surrogate saw the same mask (its output is
    close to the defense's, unlike a surrogate on another draw), and the generator ends where a
    plain forward leaves it."""
    d, images = defense(name), digits[:2]
    plain_gen = seeded(5)
    plain = d(images, plain_gen)
    gen = seeded(5)
    out = bpda(d, images.clone().requires_grad_(), gen, "surrogate")
    assert torch.equal(out.detach(), plain)
    assert torch.equal(gen.get_state(), plain_gen.get_state())
    with torch.no_grad():
        same = d.surrogate(images, seeded(5))
        other = d.surrogate(images, seeded(6))
    assert (same - plain).abs().mean() < (other - plain).abs().mean() / 4


def directional_check(function, images: torch.Tensor, step: float = 1e-6) -> tuple[float, float]:
    """(autograd, central finite difference) of <w, function(x)> along a random direction."""
    x = images.clone().requires_grad_()
    out = function(x)
    weights = torch.randn(out.shape, generator=seeded(1), dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    direction = torch.randn(images.shape, generator=seeded(2), dtype=torch.float64)
    with torch.no_grad():
        change = ((function(images + step * direction) - function(images - step * direction)) * weights).sum()
    return float((grad * direction).sum()), float(change / (2 * step))


def interior_image(channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """A float64 batch of 2 smooth-plus-noise images away from the box edges 0 and 1."""
    g = seeded(seed)
    base = torch.nn.functional.interpolate(torch.rand(2, channels, 4, 4, generator=g, dtype=torch.float64),
                                           size=size, mode="bilinear", align_corners=False)
    return (0.2 + 0.6 * base + 0.05 * torch.rand(2, channels, size, size, generator=g, dtype=torch.float64))


#: TVM is piecewise linear with many kinks (clamps in each of its 60 iterations): a tiny step.
@pytest.mark.parametrize(("name", "channels", "step"), [("wavelet", 3, 1e-6), ("wavelet", 1, 1e-6),
                                                        ("pd_wavelet", 3, 1e-6), ("tvm", 1, 1e-9),
                                                        ("menet_usvt", 1, 1e-6)])
def test_exact_surrogate_gradient_matches_finite_differences(name, channels, step):
    d = defense(name)
    analytic, numeric = directional_check(lambda x: d.surrogate(x, seeded()), interior_image(channels, 16), step)
    assert analytic == pytest.approx(numeric, rel=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_cubic_surrogate_gradient_matches_finite_differences(channels, monkeypatch):
    """The pixel roundings (to 0..255) are straight-through by construction; without them the cubic
    torch JPEG is smooth almost everywhere, and its gradient is checked."""
    monkeypatch.setattr(differentiable_jpeg, "straight_through_round", lambda x: x)
    d = defense("jpeg", "quality=50", "surrogate_rounding=cubic")
    analytic, numeric = directional_check(lambda x: d.surrogate(x, None), interior_image(channels, 16))
    assert analytic == pytest.approx(numeric, rel=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_straight_through_gradient_is_the_codec_without_rounding(channels, monkeypatch):
    """Straight-through: the gradient is that of the linear codec (every rounding removed), checked
    by its finite differences; for grey images that map is the identity (orthonormal DCT, the
    quantisation table divided out, padding cropped)."""
    d = defense("jpeg", "quality=50", "surrogate_rounding=straight_through")
    images = interior_image(channels, 12)     # 12 x 12: padded to 16 x 16 and cropped
    analytic, _ = directional_check(lambda x: d.surrogate(x, None), images)
    monkeypatch.setattr(differentiable_jpeg, "straight_through_round", lambda x: x)
    _, linear = directional_check(lambda x: d.surrogate(x, None), images)
    assert analytic == pytest.approx(linear, rel=1e-6)
    if channels == 1:
        _, identity = directional_check(lambda x: x, images)
        assert analytic == pytest.approx(identity, rel=1e-6)
    else:   # chroma subsampling makes it a blur, not the identity
        _, identity = directional_check(lambda x: x, images)
        assert analytic != pytest.approx(identity, rel=1e-3)


@pytest.mark.parametrize("method", ["softimpute", "nuclear"])
def test_menet_refinement_gradient_matches_finite_differences(method):
    d = defense("menet", f"method={method}")
    images = interior_image(1, 12)
    mask = d.sample_mask(images, d.test_probability, seeded())
    start = d.estimate(images, mask)
    analytic, numeric = directional_check(lambda x: d.refine(x, mask, start), images)
    assert analytic == pytest.approx(numeric, rel=1e-5)


@pytest.mark.parametrize("tv_weight", [0.0, 0.02])     # SRF, SPLIC
def test_completion_refinement_gradient_matches_finite_differences(tv_weight):
    settings = CompletionSettings(rank=4, tv_weight=tv_weight, max_iterations=14)
    observed = interior_image(1, 12)
    anchors = torch.rand(observed.shape, generator=seeded(3)) < 0.5
    start = complete(observed, anchors, settings, 12)
    analytic, numeric = directional_check(lambda x: refine(x, anchors, start, settings, 12, 3), observed)
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_guarded_eigh_backward_is_torchs_for_distinct_eigenvalues_and_finite_for_repeated_ones():
    g = seeded(4)
    matrix = torch.randn(3, 6, 9, generator=g, dtype=torch.float64)
    weights = torch.randn(6, 3, generator=g, dtype=torch.float64)

    def loss(eigh, x):
        values, vectors = eigh(x @ x.mT)
        return (vectors[..., -3:] * weights).sum() + values.sum()

    x = matrix.clone().requires_grad_()
    (guarded,) = torch.autograd.grad(loss(GuardedEigh.apply, x), x)
    (reference,) = torch.autograd.grad(loss(torch.linalg.eigh, x), x)
    assert torch.allclose(guarded, reference, rtol=1e-9, atol=1e-12)
    # an exactly repeated eigenvalue (0, 0) next to a used eigenvector: torch's backward is NaN
    repeated = torch.diag(torch.tensor([0.0, 0.0, 2.0, 3.0], dtype=torch.float64)).requires_grad_()
    used = torch.randn(4, 2, generator=g, dtype=torch.float64)
    (torch_grad,) = torch.autograd.grad((torch.linalg.eigh(repeated)[1][:, 1:3] * used).sum(), repeated)
    (guarded,) = torch.autograd.grad((GuardedEigh.apply(repeated)[1][:, 1:3] * used).sum(), repeated)
    assert torch.isnan(torch_grad).all() and torch.isfinite(guarded).all() and guarded.abs().sum() > 0


@pytest.mark.parametrize("window", [2, 3, 5])
def test_median_surrogate_gives_the_exact_gradient(window):
    defense = MedianSmoothing(window)
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(window), dtype=torch.float64,
                        requires_grad=True)
    assert defense.has_surrogate
    out = bpda(defense, images, None, "surrogate")
    assert torch.equal(out.detach(), defense(images.detach()))           # the forward is the defense
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), images)
    (identity,) = torch.autograd.grad((bpda(defense, images, None, "identity") * weights).sum(), images)
    assert not torch.allclose(grad, identity)                              # not straight-through
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    step = 1e-7                                                             # median is piecewise linear
    with torch.no_grad():
        change = ((defense.surrogate(images + step * direction, None) - defense.surrogate(images, None))
                  * weights).sum() / step
    assert torch.isclose(change, (grad * direction).sum(), rtol=1e-4)


@pytest.fixture(scope="module")
def digit_classifier() -> nn.Module:
    """A linear classifier fitted to 512 mnist5k training digits (83.7 % mnist5k test accuracy)."""
    train = load_dataset(compose().dataset).train.head(512)
    images, labels = train.float_images(), train.labels
    torch.manual_seed(0)
    return fit(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), images, labels, steps=100)


@pytest.mark.slow      # minutes on a loaded 2-core machine: ME-Net and SPLIC run for real at every step
@pytest.mark.parametrize("name", sorted(FORWARD_TOLERANCE))
def test_surrogate_bpda_pgd_raises_the_defended_loss(name, digits, digit_classifier):
    """BPDA-PGD (3 steps, eps 0.1, step 0.03, EOT 2 for random defenses) through the surrogate on 4
    mnist5k digits: the adversarial images stay in the ball and the real defended model's loss
    (mean over 4 fresh draws) goes up."""
    d = defense(name)
    labels = load_dataset(compose().dataset).test.labels[:4]
    target = DefendedClassifier(digit_classifier, d, seeded(), "surrogate", 2 if d.randomized else 1)
    attack = fast_attack("bpda", eps=0.1, step_size=0.03, random_start=False)
    result = attack(target, digits, labels, seeded())
    assert (result.adversarial - digits).abs().max() <= 0.1 + 1e-6 and result.gradient_evaluations > 0

    def defended_loss(images):
        generator = seeded(9)
        with torch.no_grad():
            return sum(nn.functional.cross_entropy(digit_classifier(d(images, generator)), labels)
                       for _ in range(4)) / 4

    assert defended_loss(result.adversarial) > defended_loss(digits)


@pytest.mark.slow
def test_surrogate_bpda_pgd_runs_against_every_surrogate_defense(home, shared_cache):
    names = ["jpeg", "tvm", "splic"]      # deterministic approximate, random exact, random unrolled
    result = run_cli("run", "-m", f"defense={','.join(names)}", "threat_model.bpda=surrogate",
                     "threat_model.eot_samples=2", "threat_model.n_draws=2", "dataset.limit=8",
                     "train.epochs=1", "attack.steps=2", "eval_batch_size=8",
                     f"paths.home={home}", f"paths.cache_dir={shared_cache}", cwd=home, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    children = [run for run in runs_in(home) if run.data.tags.get("sweep") != "parent"]
    assert sorted(run.data.params["defense.name"] for run in children) == sorted(names)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["threat_model.bpda"] == "surrogate"
        assert run.data.metrics["n_images"] == 8
        assert run.data.metrics["gradient_evaluations"] > 0
        assert 0.0 <= run.data.metrics["robust_accuracy"] <= 1.0
