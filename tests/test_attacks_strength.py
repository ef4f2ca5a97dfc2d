"""The attacks do their job on a small trained model (separable synthetic images)."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import accuracy, blobs, trained_mlp

from defense_cli.attacks.apgd import APGD, APGDTargeted
from defense_cli.attacks.decision_attacks import Boundary, HopSkipJump
from defense_cli.attacks.foolbox_attacks import BIM, PGD
from defense_cli.attacks.minimization_attacks import CarliniWagner, DeepFool
from defense_cli.attacks.spsa import SPSA


@pytest.fixture(scope="module", params=[2, 4], ids=["2-classes", "4-classes"])
def task(request):
    classes = request.param
    model = trained_mlp(classes)
    images, labels = blobs(classes, 16, seed=99)
    assert accuracy(model, images, labels) == 1.0
    return model, images, labels


@pytest.mark.parametrize("attack", [
    CarliniWagner(steps=50, binary_search_steps=3, learning_rate=0.05),
    DeepFool(norm="l2", steps=10),
    DeepFool(norm="linf", steps=10),
], ids=["cw", "deepfool-l2", "deepfool-linf"])
def test_minimisation_attacks_fool_the_trained_model(task, attack):
    model, images, labels = task
    adversarial = attack(model, images, labels).adversarial
    assert accuracy(model, adversarial, labels) <= 0.1
    assert (adversarial - images).flatten(1).norm(dim=1).mean() < 1.0     # small, not the whole box


def test_cw_confidence_buys_a_margin(task):
    model, images, labels = task
    adversarial = CarliniWagner(steps=100, binary_search_steps=3, learning_rate=0.05, confidence=2.0)(
        model, images, labels).adversarial
    logits = model(adversarial)
    fooled = logits.argmax(1) != labels
    true = logits.gather(1, labels[:, None]).squeeze(1)
    assert fooled.float().mean() > 0.8
    assert (logits.amax(1) - true)[fooled].min() > 1.0


@pytest.mark.parametrize("attack", [
    SPSA(eps=0.15, steps=20, samples=64),
    Boundary(eps=None, steps=50, init_directions=100, init_steps=50),
    HopSkipJump(eps=None, steps=5, initial_gradient_eval_steps=20, max_gradient_eval_steps=50,
                init_directions=100, init_steps=50),
], ids=["spsa", "boundary", "hopskipjump"])
def test_query_attacks_fool_the_trained_model_without_gradients(task, attack):
    model, images, labels = task
    result = attack(model, images, labels, torch.Generator().manual_seed(0))
    assert result.gradient_evaluations == 0 and result.queries > 0
    assert accuracy(model, result.adversarial, labels) <= 0.2


def test_more_bim_steps_do_not_help_the_model(task):
    model, images, labels = task
    few = BIM(eps=0.12, steps=2, step_size=0.02)(model, images, labels).adversarial
    many = BIM(eps=0.12, steps=10, step_size=0.02)(model, images, labels).adversarial
    assert accuracy(model, many, labels) < accuracy(model, few, labels)


@pytest.mark.parametrize("eps", [0.08, 0.1, 0.12])
def test_apgd_reaches_at_least_pgds_success(task, eps):
    model, images, labels = task
    pgd = PGD(eps=eps, steps=10, step_size=eps / 4)(model, images, labels, torch.Generator().manual_seed(0))
    best = APGDTargeted(eps=eps, steps=10) if len(labels.unique()) >= 4 else APGD(eps=eps, steps=10)
    apgd = best(model, images, labels, torch.Generator().manual_seed(0))
    assert accuracy(model, apgd.adversarial, labels) <= accuracy(model, pgd.adversarial, labels)


def test_apgd_needs_no_step_size_where_pgd_with_a_poor_one_fails(task):
    model, images, labels = task
    tiny_steps = PGD(eps=0.15, steps=10, step_size=0.002, random_start=False)(model, images, labels)
    apgd = APGD(eps=0.15, steps=10)(model, images, labels, torch.Generator().manual_seed(0))
    assert accuracy(model, apgd.adversarial, labels) < accuracy(model, tiny_steps.adversarial, labels) - 0.5


def test_nl2_loss_equals_cross_entropy_below_its_threshold_and_limits_distortion_above(task):
    model, images, labels = task
    common = dict(eps=0.3, steps=10, step_size=0.05, random_start=False)
    ce = PGD(**common)(model, images, labels).adversarial
    slack = PGD(**common, loss="nl2", nl2_threshold=100.0)(model, images, labels).adversarial
    torch.testing.assert_close(slack, ce)

    def distortion(adversarial):
        return ((adversarial - images).flatten(1).pow(2).sum(1) / images.flatten(1).pow(2).sum(1)).mean()

    tight = PGD(**common, loss="nl2", nl2_threshold=0.0, nl2_weight=1000.0)(model, images, labels).adversarial
    assert distortion(tight) < 0.5 * distortion(ce)
