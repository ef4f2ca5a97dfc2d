"""Indicators of attack failure (Pintor et al. 2022) fire on a classifier that masks its gradients on
purpose (a non-differentiable quantiser, attacked without BPDA) and stay quiet on a clean setting."""

from __future__ import annotations

import math

import pytest
import torch
from attack_helpers import pooled_blob_task
from torch import nn

from defense_cli import indicators
from defense_cli.attacks.base import CountingModel
from defense_cli.attacks.bpda import DefendedClassifier
from defense_cli.config import compose
from defense_cli.defenses.base import Defense
from defense_cli.defenses.identity import NoDefense
from defense_cli.evaluation import evaluate
from defense_cli.results import summarize
from defense_cli.validity import Probe, RunEvidence, run_checks

CPU = torch.device("cpu")
INDICATORS = ("unavailable_gradients", "unstable_predictions", "silent_success", "incomplete_optimisation",
              "transfer_failure", "randomness_detected", "unbounded")


class Quantise(nn.Module):
    """Rounds pixels to 4 levels: piecewise constant, so its gradient is zero almost everywhere."""

    def forward(self, images):
        return torch.round(images * 3) / 3


class Jitter(Defense):
    """Random noise, but not declared random (AutoAttack's randomness check must notice)."""

    def transform(self, images, generator):
        return (images + 0.2 * torch.rand(images.shape, generator=generator)).clamp(0, 1)


class Wiggly(nn.Module):
    """Logits that oscillate fast in the pixel sum: the loss jumps under noise far below 8/255."""

    def forward(self, images):
        wave = torch.sin(500 * images.flatten(1).sum(1))
        return 3 * torch.stack([wave, -wave], dim=1)


@pytest.fixture(scope="module")
def blob_mlp():
    return pooled_blob_task(4, 8, seed=11)


def check(model, test, defense, *overrides):
    """The checks of `defense-cli run` on a small real evaluation: PGD-60 at eps 0.15 (white-box, BPDA identity)."""
    cfg = compose(["attack=pgd", "attack.eps=0.15", "attack.step_size=0.01", "attack.steps=60", "checks=full",
                   "checks.unbounded.n_images=32", "checks.query.enabled=false", "checks.strength.enabled=false",
                   "threat_model.eot_samples=1", "threat_model.n_draws=1", *overrides])
    from defense_cli.attacks import build_suite, build_threat_model

    suite, threat_model = build_suite(cfg.attack), build_threat_model(cfg.threat_model)

    def sample_attack(sample_suite, sample_threat_model, n):
        return summarize(evaluate(model, defense, sample_suite, sample_threat_model, test.head(n), 64, CPU,
                                  torch.Generator().manual_seed(1), 0))

    ev = evaluate(model, defense, suite, threat_model, test, 64, CPU, torch.Generator().manual_seed(0), 0)
    metrics = summarize(ev)
    generator = torch.Generator().manual_seed(2)
    target = DefendedClassifier(model, defense, generator)
    probe = Probe(test.images, test.labels, target, target, generator)
    evidence = RunEvidence(metrics, lambda n: ev.cat("robust")[:n].float().mean().item(), sample_attack,
                           dict, probe, test.images[0].numel())
    return run_checks(cfg, defense, suite, evidence), metrics


def test_gradient_masking_on_purpose_makes_the_indicators_fire(blob_mlp):
    mlp, test = blob_mlp
    masked = nn.Sequential(Quantise(), mlp).eval()
    report, metrics = check(masked, test, NoDefense())
    assert report.metrics["indicator_unavailable_gradients"] == 1.0
    assert {"unavailable_gradients", "unbounded"} <= set(report.flags)
    assert report.metrics["indicator_unconstrained_failure"] > 0.5
    assert "try:" in report.flags["unavailable_gradients"]
    assert metrics["robust_accuracy"] > 0.5      # the "robustness" the masked gradient fakes


def test_a_clean_setting_fires_none(blob_mlp):
    mlp, test = blob_mlp
    report, metrics = check(mlp, test, NoDefense())
    assert report.flags == {}, report.flags
    assert set(INDICATORS) <= set(report.outcomes)
    assert report.metrics["indicator_unconstrained_failure"] == 0.0
    assert metrics["robust_accuracy"] < 0.2


def test_an_undeclared_random_defense_is_detected(blob_mlp):
    mlp, test = blob_mlp
    report, _ = check(mlp, test, Jitter())
    assert "randomness_detected" in report.flags and report.metrics["indicator_randomness_detected"] > 0


def test_incomplete_optimisation_and_silent_success_on_hand_made_traces():
    rising = torch.linspace(0, 1, 30)[:, None]
    settled = torch.cat([torch.linspace(0, 1, 10), torch.ones(20)])[:, None]
    noisy_but_settled = torch.cat([torch.linspace(0, 1, 10), torch.rand(20, generator=torch.Generator().manual_seed(0))])[:, None]
    traces = torch.cat([rising, settled, noisy_but_settled, torch.zeros(30, 1)], dim=1)
    assert indicators.incomplete_optimisation(traces, 0.05).tolist() == [True, False, False, False]


def test_unstable_predictions_score_is_zero_for_a_constant_loss_and_capped_at_one():
    images, labels = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    constant = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    nn.init.zeros_(constant[1].weight)
    assert torch.equal(indicators.unstable_predictions(constant, images, labels, 8 / 255, 10),
                       torch.zeros(3))
    score = indicators.unstable_predictions(Wiggly(), images, labels, 8 / 255, 10)
    assert (score <= 1).all() and score.max() > 0.5
    assert not math.isnan(score.sum().item())


def test_unstable_predictions_costs_the_same_classifier_evaluations_under_eot():
    images, labels = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    plain = CountingModel(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))
    indicators.unstable_predictions(plain, images, labels, 8 / 255, 20)
    assert plain.query_images == 3 * (1 + 20)                # the clean point, then 20 noise draws
    under_eot = CountingModel(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))
    target = DefendedClassifier(under_eot, Jitter(), torch.Generator().manual_seed(0), eot_samples=5)
    score = indicators.unstable_predictions(target, images, labels, 8 / 255, 20)
    assert under_eot.query_images == 3 * 5 * (1 + 4)         # 20 / 5 = 4 noise draws of 5 EOT samples
    assert score.shape == (3,) and (score > 0).all()         # the defense's own noise moves the loss


def test_a_bad_indicator_setting_is_named():
    from defense_cli.config import validate
    from defense_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="checks.indicators.noise_draws=0"):
        validate(compose(["checks.indicators.noise_draws=0"]))
    with pytest.raises(ConfigError, match="checks.indicators.max_unstable=2"):
        validate(compose(["checks=full", "checks.indicators.max_unstable=2"]))
