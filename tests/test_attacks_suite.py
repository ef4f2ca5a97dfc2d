"""Attack suites: the per-example worst case over attacks, which attack broke each point, random
defenses counted robust only under every draw, the surrogate entry, honest EOT costs."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import pooled_blob_task

from defense_cli.attacks.apgd import APGD
from defense_cli.attacks.base import Attack, NoAttack
from defense_cli.attacks.foolbox_attacks import FGSM, PGD
from defense_cli.attacks.suite import CLEAN, AttackSuite, as_suite
from defense_cli.attacks.threat_models import GrayBox, WhiteBox
from defense_cli.config import compose
from defense_cli.data import ImageSet
from defense_cli.defenses.base import Defense
from defense_cli.defenses.identity import NoDefense
from defense_cli.defenses.squeezing import BitDepthReduction, MedianSmoothing
from defense_cli.errors import ConfigError
from defense_cli.evaluation import evaluate
from defense_cli.results import summarize
from defense_cli.tasks.prepare import check_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def blob_task():
    return pooled_blob_task(4, 16, seed=5)


def white_box(n_draws: int = 1, eot_samples: int = 1) -> WhiteBox:
    return WhiteBox(bpda="identity", eot_samples=eot_samples, n_draws=n_draws)


def run(model, test, suite, defense=None, threat_model=None, seed=0):
    ev = evaluate(model, defense or NoDefense(), suite, threat_model or white_box(), test, 32, CPU,
                  torch.Generator().manual_seed(seed), 0)
    return ev, summarize(ev)


def test_suite_worst_case_is_the_per_example_and_over_its_attacks(blob_task):
    model, test = blob_task
    attacks = {"fgsm": FGSM(eps=0.15), "pgd": PGD(eps=0.15, steps=10, step_size=0.03),
               "apgd": APGD(eps=0.15, steps=10)}
    ev, metrics = run(model, test, AttackSuite(attacks, cascade=False))
    alone = {name: torch.cat(ev.robust_under[name]) for name in attacks}
    assert torch.equal(ev.cat("robust"), alone["fgsm"] & alone["pgd"] & alone["apgd"])
    for name in attacks:
        assert metrics["robust_accuracy"] <= metrics[f"robust_accuracy_{name}"]
    assert metrics["robust_accuracy"] < max(metrics[f"robust_accuracy_{name}"] for name in attacks)
    broken = ev.cat("broken_by")
    assert sum(metrics[f"broken_by_{name}"] for name in attacks) + metrics["broken_clean"] == (~ev.cat("robust")).sum()
    fgsm_broke = broken == 0
    assert not alone["fgsm"][fgsm_broke].any()     # credited to the first attack that broke the point


def test_cascade_attacks_only_the_points_still_robust_and_its_accuracy_falls(blob_task):
    model, test = blob_task

    class Recorder(Attack):
        def __init__(self):
            self.seen = []

        def perturb(self, model, images, labels, generator):
            self.seen.append(len(images))
            return images.clone()

    recorder = Recorder()
    suite = AttackSuite({"pgd": PGD(eps=0.15, steps=10, step_size=0.03), "after": recorder})
    ev, metrics = run(model, test, suite)
    assert sum(recorder.seen) == int(torch.cat(ev.robust_under["pgd"]).sum()) > 0
    assert metrics["robust_accuracy_after_pgd"] >= metrics["robust_accuracy_after_after"] == metrics["robust_accuracy"]
    assert metrics["broken_by_after"] == 0


def test_each_attack_of_the_suite_logs_a_progress_line_with_the_points_it_attacked_and_left(blob_task, capsys):
    model, test = blob_task
    suite = AttackSuite({"fgsm": FGSM(eps=0.15), "pgd": PGD(eps=0.15, steps=10, step_size=0.03)})
    ev = evaluate(model, NoDefense(), suite, white_box(), test, len(test), CPU, torch.Generator().manual_seed(0), 0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[progress] attack suite")]
    right_clean = int((ev.cat("broken_by") != CLEAN).sum())
    after_fgsm, after_pgd = (int(torch.cat(ev.robust_under[name]).sum()) for name in ("fgsm", "pgd"))
    assert len(lines) == 3 and f"on {len(test)} images" in lines[0]
    assert lines[1].endswith(f"attack=fgsm, attacked={right_clean}, robust={after_fgsm}")
    assert lines[2].endswith(f"attack=pgd, attacked={after_fgsm}, robust={after_pgd}") and "(2/2 attack)" in lines[2]
    assert after_pgd < after_fgsm < right_clean


class MarkedFlip(Defense):
    """Random: an image whose first pixel is 1 (the mark) is blanked with probability 1/2 per draw."""

    randomized = True

    def transform(self, images, generator):
        marked = images[:, 0, 0, 0] == 1
        coin = torch.rand(len(images), generator=generator) < 0.5
        return torch.where((marked & coin).view(-1, 1, 1, 1), torch.zeros_like(images), images)


class Mark(Attack):
    """Sets the first pixel to 1 (inside an eps = 1 ball)."""

    uses_gradients = False
    eps = 1.0

    def perturb(self, model, images, labels, generator):
        out = images.clone()
        out[:, 0, 0, 0] = 1
        return out


def test_a_random_defense_point_broken_in_one_draw_stays_broken(blob_task):
    """Mark makes every point fail in about half the draws; the clean images that come later
    survive every draw. Sound counting: nothing is robust under all 16 draws (2^-16 chance per
    point), while a single draw keeps about half."""
    model, test = blob_task
    blank = model(torch.zeros(1, 1, 16, 16)).argmax().item()
    keep = test.labels != blank
    test = ImageSet(test.images[keep], test.labels[keep])
    suite = AttackSuite({"mark": Mark(), "clean": NoAttack()})
    ev, metrics = run(model, test, suite, MarkedFlip(), GrayBox(n_draws=16))
    assert metrics["broken_clean"] == 0
    assert metrics["broken_by_mark"] == len(test.labels) and metrics["robust_accuracy"] == 0
    assert 0.2 < metrics["robust_accuracy_first_draw"] < 0.8
    assert metrics["robust_accuracy_mean_over_draws"] > 0.2


class CountingNoise(Defense):
    """Random noise; records the batch size of every call."""

    randomized = True

    def __init__(self):
        self.batch_sizes = []

    def transform(self, images, generator):
        self.batch_sizes.append(len(images))
        return (images + 0.05 * torch.rand(images.shape, generator=generator)).clamp(0, 1)


def test_eot_draws_are_one_defense_call_and_counted_as_gradients(blob_task):
    model, test = blob_task
    defense = CountingNoise()
    test = test.head(8)
    target = white_box(eot_samples=5).target(PGD(), model, defense)
    result = PGD(eps=0.1, steps=3, step_size=0.03)(target, test.images, test.labels)
    assert set(defense.batch_sizes) == {8 * 5}
    assert result.gradient_evaluations == 8 * 3 * 5



def test_defense_seconds_per_image_divides_by_every_image_the_defense_defended(blob_task):
    """The clean batch once, then each of the n_draws draws on the adversarial batch: a random
    defense under 6 draws defends 7 images per test image, a deterministic one 2."""
    model, test = blob_task
    test = test.head(20)
    suite = AttackSuite({"mark": Mark()})
    random_ev, random_metrics = run(model, test, suite, CountingNoise(), GrayBox(n_draws=6))
    assert random_ev.defended_images == 20 * (1 + 6)
    assert random_metrics["defense_seconds_per_image"] == pytest.approx(random_ev.defense_seconds / (20 * 7))
    fixed_ev, _ = run(model, test, suite, MedianSmoothing(2), GrayBox(n_draws=6))
    assert fixed_ev.defended_images == 20 * 2


def test_adaptive_suite_adds_a_surrogate_attack_where_the_defense_has_one():
    suite = AttackSuite({"pgd": PGD(), "apgd_ce": APGD()}, surrogate_attack="apgd_ce", eot_samples=20)
    with_surrogate = suite.plan(white_box(), MedianSmoothing(2))
    assert [e.name for e in with_surrogate] == ["pgd", "apgd_ce", "apgd_ce_surrogate"]
    assert with_surrogate[-1].threat_model.bpda == "surrogate" and with_surrogate[0].threat_model.bpda == "identity"
    assert [e.name for e in suite.plan(white_box(), BitDepthReduction(5))] == ["pgd", "apgd_ce"]
    assert [e.name for e in suite.plan(GrayBox(n_draws=1), MedianSmoothing(2))] == ["pgd", "apgd_ce"]
    assert with_surrogate[0].threat_model.eot_samples == 20


def test_suite_configs_compose_with_nested_attacks_and_bad_values_are_named():
    cfg = compose(["attack=adaptive", "attack.attacks.apgd_t.steps=7"])
    assert cfg.attack.attacks.apgd_t.steps == 7 and cfg.attack.attacks.pgd7.steps == 7
    with pytest.raises(ConfigError, match="surrogate_attack='nope'"):
        check_config(compose(["attack=adaptive", "attack.surrogate_attack=nope"]))
    with pytest.raises(ConfigError, match="steps"):
        check_config(compose(["attack=adaptive", "attack.attacks.apgd_ce.steps=0"]))
    assert list(as_suite(PGD(), "pgd").attacks) == ["pgd"]


def test_the_adaptive_suite_has_one_budget_that_attack_eps_moves_for_every_attack():
    from defense_cli.attacks import build_suite
    from defense_cli.validity import lead_attack_config, unbounded_attack_config

    default = build_suite(compose(["attack=adaptive"]).attack)
    assert default.eps == pytest.approx(8 / 255)
    cfg = compose(["attack=adaptive", "attack.eps=0.0078431372549"]).attack
    suite = build_suite(cfg)
    assert suite.eps == pytest.approx(2 / 255)
    assert {name: attack.eps for name, attack in suite.attacks.items()} == pytest.approx(
        {"pgd7": 2 / 255, "apgd_ce": 2 / 255, "apgd_t": 2 / 255})
    assert suite.attacks["pgd7"].step_size == pytest.approx(0.5 / 255)   # a quarter of the budget, as at 8/255
    lead = lead_attack_config(cfg)                      # the checks re-run the first attack on its own
    assert lead.name == "pgd7" and lead.eps == pytest.approx(2 / 255)
    assert unbounded_attack_config(lead, 3 * 32 * 32).step_size == pytest.approx(0.25)


def test_a_suite_refuses_an_attack_left_at_another_budget_than_its_own():
    with pytest.raises(ValueError, match=r"attacks.apgd.eps=0.1 differs from the suite's eps=0.0313725"):
        AttackSuite({"pgd": PGD(eps=8 / 255), "apgd": APGD(eps=0.1)}, eps=8 / 255)
    with pytest.raises(ConfigError, match=r"attack.attacks.apgd_t.eps=0.05 differs from the suite's eps"):
        check_config(compose(["attack=adaptive", "attack.attacks.apgd_t.eps=0.05"]))
    with pytest.raises(ConfigError, match=r"eps=-0.1 is not allowed"):
        check_config(compose(["attack=adaptive", "attack.eps=-0.1"]))
    assert AttackSuite({"none": NoAttack(), "pgd": PGD(eps=0.1)}, eps=0.1).eps == 0.1   # no budget to disagree


def test_a_suite_runs_black_box_transfer_and_query_attacks_against_their_own_targets(blob_task):
    from defense_cli.attacks.spsa import SPSA
    from defense_cli.attacks.threat_models import BlackBox

    model, test = blob_task
    source = pooled_blob_task(4, 16, seed=9)[0]
    calls = {"source": 0}
    source.register_forward_hook(lambda *_: calls.__setitem__("source", calls["source"] + 1))
    suite = AttackSuite({"transfer": PGD(eps=0.15, steps=5, step_size=0.05),
                         "spsa": SPSA(eps=0.15, steps=3, samples=8, samples_per_query=8)})
    threat_model = BlackBox(source={"model": {"_target_": "unused"}, "train_seed": 1}, n_draws=1)
    ev = evaluate(model, NoDefense(), suite, threat_model, test.head(16), 16, CPU, torch.Generator().manual_seed(0), 0,
                  source_model=lambda: source)
    metrics = summarize(ev)
    assert calls["source"] > 0 and metrics["queries"] > 0
    assert metrics["robust_accuracy"] <= metrics["robust_accuracy_after_transfer"]


def test_undefended_attack_success_rate_counts_only_the_points_the_suite_attacked():
    from defense_cli.attacks.suite import CLEAN, UNBROKEN
    from defense_cli.evaluation import Evaluation
    labels = torch.tensor([0, 1, 2, 3])
    # points 2 and 3: the defense gets them wrong clean, so the suite leaves them unattacked (adversarial
    # = clean image, which the bare classifier gets right); points 0 and 1 were attacked, point 0 fooled it
    ev = Evaluation(labels=[labels], clean=[labels.clone()], defended_clean=[torch.tensor([0, 1, 0, 0])],
                    adversarial=[torch.tensor([1, 1, 2, 3])], defended_adversarial=[torch.tensor([1, 1, 0, 0])],
                    robust=[torch.tensor([False, True, False, False])],
                    broken_by=[torch.tensor([0, UNBROKEN, CLEAN, CLEAN])], entries=["pgd"],
                    robust_under={"pgd": [torch.tensor([False, True, False, False])]},
                    iterate_fooled=[torch.tensor([True, False, False, False])],
                    l2=[torch.tensor([0.5, 0.5, 0.0, 0.0])], linf=[torch.tensor([0.03, 0.03, 0.0, 0.0])])
    metrics = summarize(ev)
    assert metrics["undefended_attack_success_rate"] == pytest.approx(0.5)   # 1 of the 2 attacked points
    assert metrics["undefended_robust_accuracy"] == pytest.approx(0.75)     # over every point
