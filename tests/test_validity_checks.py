"""Validity checks fire on hand-built cases that should trip them and stay quiet otherwise."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from defense_cli.attacks.base import NoAttack
from defense_cli.attacks.foolbox_attacks import PGD
from defense_cli.config import compose
from defense_cli.defenses.base import Defense
from defense_cli.defenses.jpeg import JPEG
from defense_cli.attacks import build_suite
from defense_cli.validity import (
    Probe,
    RunEvidence,
    random_without_eot,
    run_checks,
    strength_rises,
    stronger_attack_config,
    transfer_stronger,
    unbounded_attack_config,
    unbounded_not_zero,
)


TRACE_INDICATORS = ("silent_success", "incomplete_optimisation", "transfer_failure")


class Noise(Defense):
    randomized = True

    def transform(self, images, generator):
        return (images + 0.1 * torch.rand(images.shape, generator=generator)).clamp(0, 1)


def test_random_defense_without_eot_fires_only_white_box_with_one_draw():
    assert random_without_eot(Noise(), PGD(), "white_box", 1) is not None
    assert random_without_eot(Noise(), PGD(), "white_box", 10) is None
    assert random_without_eot(Noise(), PGD(), "gray_box", 1) is None
    assert random_without_eot(JPEG(75), PGD(), "white_box", 1) is None
    assert random_without_eot(Noise(), NoAttack(), "white_box", 1) is None


def test_transfer_stronger_than_white_box_fires_both_ways():
    assert transfer_stronger("gray_box", 0.30, {"wb": 0.50}, 0.02) is not None
    assert transfer_stronger("gray_box", 0.50, {"wb": 0.30}, 0.02) is None
    assert transfer_stronger("gray_box", 0.49, {"wb": 0.50}, 0.02) is None     # within tolerance
    assert transfer_stronger("white_box", 0.50, {"gb": 0.30, "bb": 0.60}, 0.02) is not None
    assert transfer_stronger("white_box", 0.30, {"gb": 0.50}, 0.02) is None
    assert transfer_stronger("black_box", 0.30, {}, 0.02) is None
    assert transfer_stronger("black_box", math.nan, {"wb": 0.5}, 0.02) is None


def test_strength_and_unbounded_thresholds():
    assert strength_rises(0.30, 0.40, "4x steps", 0.02) is not None
    assert strength_rises(0.30, 0.31, "4x steps", 0.02) is None
    assert strength_rises(0.30, 0.10, "4x steps", 0.02) is None
    assert unbounded_not_zero(0.20, 0.05) is not None
    assert unbounded_not_zero(0.0, 0.05) is None


def test_stronger_and_unbounded_attack_configs():
    attack = compose(["attack=pgd", "attack.eps=0.03", "attack.step_size=0.01", "attack.steps=10"]).attack
    assert stronger_attack_config(attack, 4).steps == 40
    unbounded = unbounded_attack_config(attack, 784)
    assert unbounded.eps == 1.0 and unbounded.step_size == pytest.approx(0.01 / 0.03)
    assert unbounded.random_start is False
    l2 = unbounded_attack_config(OmegaConf.merge(attack, {"norm": "l2"}), 784)
    assert l2.eps == pytest.approx(28.0)
    none = compose(["attack=none"]).attack
    assert stronger_attack_config(none, 4) is None and unbounded_attack_config(none, 784) is None


def checks_cfg(*overrides: str):
    return compose(["attack=pgd", *overrides])


def probe() -> Probe:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return Probe(images, torch.tensor([0, 1, 2, 3]), model, model)


def run(cfg, defense, accuracy=0.5, sample=0.5, resampled=None, others=None):
    calls = []

    def sample_attack(suite, settings, n):
        calls.append((next(iter(suite.attacks.values())), settings, n))
        return {"robust_accuracy": resampled[len(calls) - 1], "n_images": float(n), "broken_clean": 0.0}

    metrics = {"robust_accuracy": accuracy, **{f"indicator_{name}": math.nan for name in TRACE_INDICATORS}}
    evidence = RunEvidence(metrics, lambda n: sample, sample_attack, lambda: others or {}, probe(), 784)
    report = run_checks(cfg, defense, build_suite(cfg.attack), evidence)
    return report, calls


def test_default_checks_are_quiet_on_a_sound_run_and_do_not_re_attack():
    report, calls = run(checks_cfg(), JPEG(75))
    assert report.flags == {} and calls == []
    assert report.tags() == {"check.random_without_eot": "ok", "check.transfer_stronger": "ok",
                             "check.unavailable_gradients": "ok", "check.unstable_predictions": "ok",
                             **{f"check.{name}": "ok" for name in TRACE_INDICATORS},
                             "check.randomness_detected": "ok"}


def test_checks_fire_and_are_logged_as_tags():
    cfg = checks_cfg("threat_model.eot_samples=1", "threat_model=white_box",
                     "checks.strength.enabled=true", "checks.unbounded.enabled=true")
    report, calls = run(cfg, Noise(), accuracy=0.6, sample=0.5, resampled=[0.7, 0.4], others={"gb": 0.2})
    assert set(report.flags) == {"random_without_eot", "transfer_stronger", "strength", "unbounded"}
    assert report.tags()["check.strength"].startswith("FLAG")
    stronger, unbounded = calls
    assert stronger[0].steps == 4 * cfg.attack.steps and stronger[1].eot_samples == 4 and stronger[2] == 64
    assert unbounded[0].eps == 1.0


def test_strength_and_unbounded_stay_quiet_when_the_attack_converges():
    cfg = checks_cfg("threat_model.eot_samples=8", "checks.strength.enabled=true", "checks.unbounded.enabled=true")
    report, _ = run(cfg, Noise(), sample=0.5, resampled=[0.49, 0.0])
    assert report.flags == {}


def test_unbounded_check_is_skipped_outside_white_box():
    cfg = checks_cfg("threat_model=gray_box", "checks.unbounded.enabled=true")
    report, calls = run(cfg, JPEG(75))
    assert report.outcomes["unbounded"].startswith("skipped") and calls == []


@pytest.mark.slow  # creating the SQLite store runs MLflow's migrations (seconds on a loaded machine)
def test_matching_runs_are_found_in_mlflow_by_setting(tmp_path):
    from defense_cli.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "checks")
    for threat_model, setting, accuracy in (("white_box", "s1", 0.4), ("gray_box", "s1", 0.2),
                                            ("white_box", "s2", 0.9)):
        with tracker.run("r", {"setting": setting, "threat_model": threat_model}) as log:
            log.metrics({"robust_accuracy": accuracy})
    found = tracker.finished_runs({"setting": "s1"}, "robust_accuracy")
    assert sorted((tags["threat_model"], value) for tags, value in found.values()) == [
        ("gray_box", 0.2), ("white_box", 0.4)]


def test_unbounded_config_keeps_an_attack_that_is_unbounded_already():
    from omegaconf import OmegaConf

    from defense_cli.validity import unbounded_attack_config

    cw = OmegaConf.create({"name": "cw", "eps": None, "steps": 10})
    assert unbounded_attack_config(cw, 784) == cw
