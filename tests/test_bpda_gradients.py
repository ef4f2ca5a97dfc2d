"""BPDA and EOT: forward values, gradients, chains, highest-loss iterates, per-draw metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from defense_cli.attacks.bpda import DefendedClassifier, HighestLossIterate, bpda
from defense_cli.attacks.threat_models import WhiteBox
from defense_cli.attacks.base import NoAttack
from defense_cli.defenses.base import Defense
from defense_cli.defenses.chain import Chain
from defense_cli.defenses.jpeg import JPEG
from defense_cli.errors import ConfigError
from defense_cli.evaluation import Evaluation
from defense_cli.results import draw_metrics, per_draw_accuracies


class Square(Defense):
    """x -> x^2; optionally with the exact surrogate x^2 (so BPDA=surrogate is the true gradient)."""

    def __init__(self, with_surrogate: bool) -> None:
        self.with_surrogate = with_surrogate

    def transform(self, images, generator):
        return images**2

    def surrogate(self, images, generator):
        return images**2 if self.with_surrogate else images

    @property
    def has_surrogate(self) -> bool:
        return self.with_surrogate


class AddNoise(Defense):
    """x + uniform noise in [0, 0.2], clamped: a random defense drawing from `generator`."""

    randomized = True

    def transform(self, images, generator):
        noise = torch.rand(images.shape, generator=generator, device=images.device) * 0.2
        return (images + noise).clamp(0, 1)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def images(seed: int = 1, n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def input_gradient(model: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (model(x) * weights).sum().backward()
    return x.grad


WEIGHTS = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def test_forward_equals_the_defense_exactly():
    x = images().float().requires_grad_(True)
    defense = JPEG(50)
    assert torch.equal(bpda(defense, x), defense(x.detach()))
    assert not torch.equal(defense(x.detach()), x.detach())  # JPEG really changes the input


def test_identity_gradient_is_the_model_gradient_at_the_defended_input():
    model, x, defense = tiny_model(), images(), Square(with_surrogate=False)
    target = DefendedClassifier(model, defense)
    got = input_gradient(target, x, WEIGHTS)
    expected = input_gradient(model, defense(x), WEIGHTS)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, input_gradient(model, x, WEIGHTS))  # not the gradient at x


class BatchSizes(nn.Module):
    """`model`, recording the batch size of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


def test_an_eot_gradient_is_the_mean_of_the_per_draw_gradients_and_the_classifier_sees_one_draw_at_a_time():
    model, x, draws = BatchSizes(tiny_model()), images(n=5), 4
    got = input_gradient(DefendedClassifier(model, AddNoise(), torch.Generator().manual_seed(3), eot_samples=draws),
                         x, WEIGHTS)
    defended = AddNoise()(x.repeat(draws, 1, 1, 1), torch.Generator().manual_seed(3)).view(draws, *x.shape)
    expected = sum(input_gradient(model.model, d, WEIGHTS) for d in defended) / draws   # identity BPDA per draw
    torch.testing.assert_close(got, expected)
    assert model.sizes and set(model.sizes) == {len(x)}        # forward and checkpoint recompute: B images


def test_surrogate_gradient_differentiates_the_surrogate():
    model, x, defense = tiny_model(), images(), Square(with_surrogate=True)
    got = input_gradient(DefendedClassifier(model, defense, bpda_mode="surrogate"), x, WEIGHTS)
    expected = input_gradient(model, defense(x), WEIGHTS) * 2 * x   # chain rule through x^2
    torch.testing.assert_close(got, expected)


def test_surrogate_mode_needs_a_defense_with_a_surrogate():
    with pytest.raises(ConfigError, match="surrogate"):
        WhiteBox(bpda="surrogate", eot_samples=1, n_draws=1).target(NoAttack(), tiny_model(),
                                                                    Square(with_surrogate=False))


def test_chain_forward_and_each_step_differentiated_at_its_own_input():
    model, x = tiny_model(), images()
    first, second = Square(with_surrogate=False), Square(with_surrogate=True)
    chain = Chain([first, second])
    torch.testing.assert_close(chain(x), x**4)
    got = input_gradient(DefendedClassifier(model, chain, bpda_mode="surrogate"), x, WEIGHTS)
    # step 2's surrogate y^2 is differentiated at its own input y = x^2 (-> 2 x^2); step 1 is the identity
    expected = input_gradient(model, x**4, WEIGHTS) * 2 * x**2
    torch.testing.assert_close(got, expected)


def test_chain_of_named_steps_is_built_from_configs():
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError

    from defense_cli.config import compose
    from defense_cli.defenses import build_defense

    chain = build_defense(compose(["defense=chain", "defense@defense.steps.second=jpeg",
                                   "defense.steps.second.quality=30"]).defense)
    assert [step.quality for step in chain.steps] == [75, 30]
    with pytest.raises(HydraException, match="no_such_defense"):
        compose(["defense=chain", "defense@defense.steps.first=no_such_defense"])
    with pytest.raises((HydraException, ConfigKeyError), match="qualty"):
        compose(["defense=chain", "defense.steps.first.qualty=30"])
    with pytest.raises(ValueError, match="steps"):
        Chain(["jpeg"])


def test_chain_is_random_when_a_step_is():
    assert Chain([JPEG(75), AddNoise()]).randomized
    assert not Chain([JPEG(75), JPEG(50)]).randomized


def test_eot_gradient_is_the_mean_of_the_per_draw_gradients():
    model, x, defense = tiny_model(), images(), AddNoise()
    eot = DefendedClassifier(model, defense, torch.Generator().manual_seed(7), eot_samples=4)
    got = input_gradient(eot, x, WEIGHTS)
    replay = torch.Generator().manual_seed(7)
    per_draw = [input_gradient(model, defense(x, replay), WEIGHTS) for _ in range(4)]
    torch.testing.assert_close(got, torch.stack(per_draw).mean(0))
    assert not torch.allclose(per_draw[0], per_draw[1])  # the draws differ


def test_white_box_uses_eot_only_for_random_defenses():
    white_box = WhiteBox(bpda="identity", eot_samples=6, n_draws=1)
    random_target = white_box.target(NoAttack(), tiny_model(), AddNoise())
    fixed_target = white_box.target(NoAttack(), tiny_model(), JPEG(75))
    assert (random_target.eot_samples, fixed_target.eot_samples) == (6, 1)


def test_highest_loss_iterate_keeps_the_worst_valid_iterate_per_example():
    model = tiny_model()
    clean = images(n=2) * 0.5 + 0.25
    labels = model(clean).argmax(1)
    tracker = HighestLossIterate(model, clean, labels, "linf", eps=0.1)
    direction = torch.sign(input_gradient(lambda z: -model(z).gather(1, labels[:, None]), clean,
                                          torch.ones(1, dtype=torch.float64)))
    good = clean + 0.1 * direction          # inside the ball, loss up
    outside = clean + 0.3 * direction        # higher loss, but outside the ball: ignored
    tracker(clean)
    tracker(good)
    tracker(outside)
    chosen = tracker.select(clean)
    torch.testing.assert_close(chosen, good)


def test_per_draw_metrics_report_mean_std_and_worst():
    ev = Evaluation(labels=[torch.tensor([0, 1, 2, 3])],
                    draws=[torch.tensor([[0, 1, 2, 3], [0, 1, 0, 0], [0, 0, 2, 3]])])
    assert per_draw_accuracies(ev) == [1.0, 0.5, 0.75]
    metrics = draw_metrics(ev)
    assert metrics["robust_accuracy_mean_over_draws"] == pytest.approx(0.75)
    assert metrics["robust_accuracy_std_over_draws"] == pytest.approx(0.25)
    assert metrics["robust_accuracy_worst_draw"] == 0.5
    assert metrics["robust_accuracy_every_draw"] == 0.25      # only image 0 right under every draw
    assert draw_metrics(Evaluation(labels=[torch.tensor([0])])) == {}
    assert not math.isnan(metrics["n_draws"])


def test_evaluate_defends_each_adversarial_batch_n_draws_times_for_random_defenses():
    from defense_cli.attacks.suite import as_suite
    from defense_cli.attacks.threat_models import GrayBox
    from defense_cli.data import ImageSet
    from defense_cli.evaluation import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))
    pixels = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(2))   # SSIM needs 11x11
    data = ImageSet(pixels, torch.tensor([0, 1, 2, 0, 1, 2]))
    generator = torch.Generator().manual_seed(0)
    suite, threat_model = as_suite(NoAttack(), "none"), GrayBox(n_draws=3)
    ev = evaluate(model, AddNoise(), suite, threat_model, data, 4, torch.device("cpu"), generator, 0)
    assert [tuple(d.shape) for d in ev.draws] == [(3, 4), (3, 2)]
    assert torch.equal(ev.draws[0][0], ev.defended_adversarial[0])
    fixed = evaluate(model, JPEG(75), suite, threat_model, data, 4, torch.device("cpu"), generator, 0)
    assert fixed.draws == []
