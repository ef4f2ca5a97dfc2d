"""Every attack config in conf/attack/ builds, respects [0, 1] and its eps ball, repeats under a seed,
states its strength; bad constructor arguments raise ValueError naming the parameter."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import fast_attack, tiny_model

from defense_cli.attacks import build_attack
from defense_cli.attacks.apgd import APGD, APGDTargeted
from defense_cli.attacks.decision_attacks import Boundary, HopSkipJump
from defense_cli.attacks.foolbox_attacks import BIM, FGSM, PGD
from defense_cli.attacks.minimization_attacks import CarliniWagner, DeepFool
from defense_cli.attacks.spsa import SPSA
from defense_cli.config import compose, compose_group_option, group_options
from defense_cli.tasks.prepare import check_config
from defense_cli.errors import ConfigError

#: single attacks (the suites, configs with nested `attacks`, are tested in test_attacks_suite.py)
ATTACKS = [name for name in sorted(group_options("attack")) if "attacks" not in compose_group_option("attack", name)]


@pytest.fixture(scope="module")
def batch():
    model = tiny_model()
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


def _run(name, batch, seed, **overrides):
    model, images, labels = batch
    return fast_attack(name, **overrides)(model, images, labels, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_stays_in_the_unit_box_and_its_eps_ball(name, batch):
    _, images, _ = batch
    attack = fast_attack(name)
    if attack.eps is None:        # unbounded minimisation / decision attack: bound it for this check
        attack = fast_attack(name, eps=0.05)
    adversarial = attack(*batch, torch.Generator().manual_seed(0)).adversarial
    assert adversarial.shape == images.shape and adversarial.dtype == images.dtype
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    delta = (adversarial - images).flatten(1)
    size = delta.abs().amax(1) if attack.norm == "linf" else delta.norm(dim=1)
    assert (size <= attack.eps + 1e-5).all(), (size.max().item(), attack.eps)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_repeats_under_a_seed(name, batch):
    first, second = _run(name, batch, 7), _run(name, batch, 7)
    torch.testing.assert_close(first.adversarial, second.adversarial, atol=0, rtol=0)
    assert (first.gradient_evaluations, first.queries) == (second.gradient_evaluations, second.queries)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_config_has_a_description_and_validates(name):
    assert group_options("attack")[name], f"conf/attack/{name}.yaml needs a first-line comment"
    check_config(compose([f"attack={name}"]))
    described = build_attack(compose_group_option("attack", name)).describe()
    if name != "none":
        assert "eps=" in described


@pytest.mark.parametrize("name", ["pgd", "apgd_ce", "spsa", "boundary"])
def test_random_attacks_differ_across_seeds(name, batch):
    assert not torch.equal(_run(name, batch, 1).adversarial, _run(name, batch, 2).adversarial)


def test_unbounded_minimisation_attack_reports_its_raw_perturbation(batch):
    model, images, labels = batch
    raw = fast_attack("deepfool", steps=10)(*batch).adversarial
    fooled = model(raw).argmax(1) != labels
    assert fooled.any()
    assert (raw - images)[fooled].abs().amax() > 0.05     # not clipped to any eps


def test_papers_settings_reach_the_attacks():
    cw = build_attack(compose_group_option("attack", "splic_paper_cw"))
    assert (cw.confidence, cw.binary_search_steps, cw.learning_rate, cw.steps) == (20, 5, 0.005, 1000)
    deepfool = build_attack(compose_group_option("attack", "zhao2020_ch3_deepfool"))
    assert (deepfool.steps, deepfool.overshoot) == (5, 0.02)
    bim = build_attack(compose_group_option("attack", "zhao2020_ch3_bim"))
    assert (bim.steps, round(bim.eps * 255, 6), bim.random_start) == (10, 8, False)
    bpda = build_attack(compose_group_option("attack", "zhao2020_ch3_bpda"))
    assert (bpda.steps, round(bpda.eps * 255, 6)) == (10, 2)
    assert build_attack(compose_group_option("attack", "zhao2020_ch3_bpda_nl2")).loss == "nl2"
    for name, steps in (("splic_paper_pgd", 7), ("splic_paper_bpda", 7), ("bpda", 7), ("pgd7", 7), ("yang2019menet_pgd7", 7), ("yang2019menet_pgd20", 20),
                        ("yang2019menet_pgd40", 40), ("yang2019menet_bpda1000", 1000)):
        pgd = build_attack(compose_group_option("attack", name))
        assert (pgd.steps, round(pgd.eps * 255, 6), round(pgd.step_size * 255, 6)) == (steps, 8, 2), name
    assert build_attack(compose_group_option("attack", "yang2019menet_boundary")).steps == 1000
    assert build_attack(compose_group_option("attack", "yang2019menet_spsa")).samples == 2048


@pytest.mark.parametrize("make, parameter", [
    (lambda: FGSM(eps=-0.1), "eps"),
    (lambda: FGSM(eps=None), "eps"),
    (lambda: PGD(steps=0), "steps"),
    (lambda: PGD(norm="l1"), "norm"),
    (lambda: PGD(loss="hinge"), "loss"),
    (lambda: PGD(restarts=0), "restarts"),
    (lambda: PGD(step_size=0), "step_size"),
    (lambda: BIM(steps=0), "steps"),
    (lambda: CarliniWagner(eps=-1), "eps"),
    (lambda: CarliniWagner(binary_search_steps=0), "binary_search_steps"),
    (lambda: CarliniWagner(learning_rate=0), "learning_rate"),
    (lambda: CarliniWagner(confidence=-1), "confidence"),
    (lambda: DeepFool(norm="l0"), "norm"),
    (lambda: DeepFool(overshoot=-0.1), "overshoot"),
    (lambda: DeepFool(candidates=1), "candidates"),
    (lambda: Boundary(steps=0), "steps"),
    (lambda: Boundary(step_adaptation=1.0), "step_adaptation"),
    (lambda: HopSkipJump(norm="l1"), "norm"),
    (lambda: HopSkipJump(init_directions=0), "init_directions"),
    (lambda: HopSkipJump(initial_gradient_eval_steps=50, max_gradient_eval_steps=20), "initial_gradient_eval_steps"),
    (lambda: SPSA(norm="l2"), "norm"),
    (lambda: SPSA(samples=0), "samples"),
    (lambda: SPSA(delta=0), "delta"),
    (lambda: APGD(loss="mse"), "loss"),
    (lambda: APGD(rho=1.5), "rho"),
    (lambda: APGD(eps=-0.01), "eps"),
    (lambda: APGDTargeted(target_classes=0), "target_classes"),
])
def test_bad_arguments_raise_value_error_naming_the_parameter(make, parameter):
    with pytest.raises(ValueError, match=rf"\b{parameter}="):
        make()


def test_bad_value_in_a_config_is_a_config_error():
    cfg = compose_group_option("attack", "spsa")
    cfg.samples = 0
    with pytest.raises(ConfigError, match="samples"):
        build_attack(cfg)
    with pytest.raises(ConfigError, match="attack.eps"):
        check_config(compose(["attack=pgd", "attack.eps=-1"]))
