"""Results that cannot be trusted are said so: a classifier at chance, a defense that breaks a
classifier trained on clean images, a training loss that is not finite."""

from __future__ import annotations

import pytest
import torch

from defense_cli.attacks import build_suite
from defense_cli.config import compose
from defense_cli.data.image_set import ImageSet
from defense_cli.defenses.jpeg import JPEG
from defense_cli.errors import TrainingDiverged
from defense_cli.models import build_classifier
from defense_cli.training.trainer import train_classifier
from defense_cli.validity import Probe, RunEvidence, classifier_at_chance, defended_clean_drop, run_checks


def test_defended_clean_drop_points_to_training_on_defended_images():
    message = defended_clean_drop(0.94, 0.22, 0.1, "splic", trained_on_defended=False)
    assert "22.00% is 72.0 points below clean 94.00%" in message
    assert "defense@train.preprocess=splic" in message
    assert "trained on defended images" in defended_clean_drop(0.94, 0.5, 0.1, "splic", trained_on_defended=True)
    assert defended_clean_drop(0.94, 0.85, 0.1, "splic", False) is None
    assert defended_clean_drop(0.94, float("nan"), 0.1, "splic", False) is None


def test_classifier_at_chance_names_the_learning_rate():
    train = compose(["model=small_cnn"]).train
    assert "10.00% is at chance (10% for 10 classes)" in classifier_at_chance(0.10, 10, 0.05, train)
    assert "train.lr=0.1" in classifier_at_chance(0.14, 10, 0.05, train)
    assert classifier_at_chance(0.16, 10, 0.05, train) is None


#: the indicators of attack failure, off: these tests look only at the clean-accuracy checks
INDICATORS_OFF = [f"checks.indicators.{name}=false" for name in (
    "unavailable_gradients", "unstable_predictions", "silent_success", "incomplete_optimisation",
    "transfer_failure", "randomness_detected")]


def _report(*overrides, clean):
    cfg = compose(["attack=pgd", "defense=jpeg", *INDICATORS_OFF, *overrides])
    metrics = {"robust_accuracy": 0.1, "clean_accuracy": clean[0], "defended_clean_accuracy": clean[1]}
    probe = Probe(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), None, torch.nn.Identity())
    evidence = RunEvidence(metrics, lambda n: 0.1, None, lambda: {}, probe, 784)
    return run_checks(cfg, JPEG(75), build_suite(cfg.attack), evidence)


def test_run_checks_flag_both_and_log_them_as_tags():
    assert set(_report(clean=(0.12, 0.0)).flags) == {"classifier_at_chance", "defended_clean_drop"}
    report = _report(clean=(0.95, 0.40))
    assert set(report.flags) == {"defended_clean_drop"}
    assert report.tags()["check.defended_clean_drop"].startswith("FLAG")
    assert _report("checks.defended_clean_drop=false", "checks.classifier_at_chance=false",
                   clean=(0.1, 0.0)).flags == {}


def test_vanilla_convnet_defaults_to_the_papers_learning_rate():
    assert compose(["model=convnet"]).train.lr == 0.01  # 0.1 left it at chance
    assert compose(["model=convnet", "train=repr"]).train.lr == 0.01
    assert compose(["model=small_cnn"]).train.lr == 0.1
    assert compose(["model=convnet", "train.lr=0.05"]).train.lr == 0.05


def test_a_non_finite_loss_stops_training_with_a_clear_error():
    cfg = compose(["model=small_cnn", "train.epochs=2", "train.lr=1e30", "train.batch_size=16"])
    torch.manual_seed(0)
    data = ImageSet(torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    model = build_classifier(cfg.model, cfg.dataset)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan in epoch 1 of 2 \(train.lr=1e\+30"):
        train_classifier(model, data, cfg.train, torch.device("cpu"))
