"""Validity checks of a robustness result (Athalye et al. 2018 section 5; Carlini et al. 2019, "On
evaluating adversarial robustness", section 5; Pintor et al. 2022, "Indicators of attack failure",
NeurIPS, sec. 3; Croce and Hein 2020, AutoAttack's checks): signs that the attack, not the
defense, is weak.

Each check returns None when it stays quiet, or a one-line message (with a hint: what to change)
when it fires; an indicator also gives a metric `indicator_<name>`. `run_checks` runs the ones
switched on in the `checks` config group: `checks=default` runs the cheap ones (no second attack),
`checks=full` adds the ones that re-attack a sample.

- indicators 1-5 and randomness_detected (cheap; `defense_cli.indicators` computes the scores):
  unavailable gradients, unstable predictions, silent success, incomplete optimisation, transfer
  failure; a defended classifier whose 5 forward passes disagree although the defense is not
  declared random.
- query_stronger (full): a query-only attack on the defended oracle beats the white-box suite by
  more than `checks.query.max_gap` on a sample.

- random_without_eot: a random defense attacked white-box with a single draw per gradient.
- transfer_stronger: a gray- or black-box attack beats the white-box one on the same setting (the
  white-box attacker knows strictly more, so its result is then not a real upper bound).
- strength: robust accuracy rises when the attack gets more steps or more EOT samples.
- defended_clean_drop: the defense costs more clean accuracy than `clean_drop_tolerance`: the
  classifier does not fit defended images (most papers train it on them, e.g. SPLIC-Net), so the
  robust accuracy measures a broken classifier rather than a defense.
- classifier_at_chance: the classifier's clean accuracy is at chance level: training failed
  (a learning rate too high for the model, too few epochs), and every other number is meaningless.
- unbounded: a white-box attack with eps = 1 (Linf; the image diameter for L2) leaves accuracy
  above about 0 %: the gradient does not lead anywhere (gradient masking); its metric
  `indicator_unconstrained_failure` is indicator 6, the share of clean-correct points not flipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from defense_cli import indicators
from defense_cli.attacks import Attack, ThreatModel, build_attack, build_threat_model
from defense_cli.attacks.suite import AttackSuite, as_suite
from defense_cli.attacks.threat_models import WhiteBox
from defense_cli.defenses import Defense

#: (suite, threat model, n_images) -> the metrics of that suite on the first n test images
SampleAttack = Callable[[AttackSuite, ThreatModel, int], dict[str, float]]


def random_without_eot(defense: Defense, attack: Attack, threat_model: str, eot_samples: int) -> str | None:
    """Fires when a random defense is attacked with gradients white-box and one draw per step."""
    if defense.randomized and attack.uses_gradients and threat_model == "white_box" and eot_samples <= 1:
        return (f"random defense {type(defense).__name__} attacked without EOT (eot_samples={eot_samples}); "
                "set threat_model.eot_samples > 1")
    return None


def transfer_stronger(threat_model: str, robust_accuracy: float, others: dict[str, float],
                      tolerance: float) -> str | None:
    """Fires when a weaker-knowledge attack does better than the white-box one on the same setting.

    `others` maps the run ids of matching runs under the other threat models to their robust
    accuracy: white-box runs for a gray/black-box run, gray/black-box runs for a white-box run.
    """
    if math.isnan(robust_accuracy) or not others:
        return None
    if threat_model == "white_box":
        run_id, weakest = min(others.items(), key=lambda item: item[1])
        if weakest < robust_accuracy - tolerance:
            return (f"white-box robust accuracy {robust_accuracy:.2%} is above a transfer attack's "
                    f"{weakest:.2%} (run {run_id}): the white-box attack is too weak")
        return None
    run_id, white = max(others.items(), key=lambda item: item[1])
    if robust_accuracy < white - tolerance:
        return (f"{threat_model} robust accuracy {robust_accuracy:.2%} is below the white-box "
                f"{white:.2%} (run {run_id}): the white-box attack is too weak")
    return None


def defended_clean_drop(clean: float, defended_clean: float, tolerance: float, defense_name: str,
                        trained_on_defended: bool) -> str | None:
    """Fires when defended clean accuracy is more than `tolerance` below clean accuracy."""
    if math.isnan(clean) or math.isnan(defended_clean) or clean - defended_clean <= tolerance:
        return None
    hint = ("even on a classifier trained on defended images: the defense destroys the images' content"
            if trained_on_defended else
            f"the classifier was trained on clean images; train it on defended ones with "
            f"defense@train.preprocess={defense_name}")
    return (f"defended clean accuracy {defended_clean:.2%} is {100 * (clean - defended_clean):.1f} points below "
            f"clean {clean:.2%} (tolerance {tolerance:.0%}): {hint}")


def classifier_at_chance(clean: float, num_classes: int, margin: float, train_cfg: DictConfig) -> str | None:
    """Fires when clean accuracy is at most chance (1 / num_classes) + `margin`."""
    chance = 1 / num_classes
    if math.isnan(clean) or clean > chance + margin:
        return None
    return (f"clean accuracy {clean:.2%} is at chance ({chance:.0%} for {num_classes} classes): the classifier "
            f"did not learn (train.lr={train_cfg.lr}, train.epochs={train_cfg.epochs}); lower train.lr or train "
            "longer")


def strength_rises(base_accuracy: float, stronger_accuracy: float, what: str, tolerance: float) -> str | None:
    """Fires when robust accuracy rises with a stronger attack (more steps, more EOT samples)."""
    if stronger_accuracy > base_accuracy + tolerance:
        return (f"robust accuracy rises from {base_accuracy:.2%} to {stronger_accuracy:.2%} with {what}: "
                "the attack has not converged or its gradient is noisy")
    return None


def unbounded_not_zero(accuracy: float, max_accuracy: float) -> str | None:
    """Fires when an unbounded attack leaves robust accuracy above `max_accuracy`."""
    if accuracy > max_accuracy:
        return (f"an unbounded attack (eps = 1) leaves {accuracy:.2%} robust accuracy (> {max_accuracy:.0%}): "
                "gradient masking suspected")
    return None


def stronger_attack_config(attack_cfg: DictConfig, factor: int) -> DictConfig | None:
    """The attack with `factor` times its steps (None for an attack without steps)."""
    if "steps" not in attack_cfg:
        return None
    return OmegaConf.merge(attack_cfg, {"steps": int(attack_cfg.steps) * factor})


def unbounded_attack_config(attack_cfg: DictConfig, n_pixels: int) -> DictConfig | None:
    """The attack with eps = 1 (Linf) or sqrt(n_pixels) (L2, the cube's diameter); the step size is
    scaled by the same ratio so the attack can travel that far, and it starts from the clean image
    (a random start in a ball that large is a noise image, far from any useful gradient).
    None for an attack without eps; an attack with eps = null is unbounded already and kept as is."""
    if "eps" not in attack_cfg:
        return None
    if attack_cfg.eps is None:
        return attack_cfg
    eps = math.sqrt(n_pixels) if build_attack(attack_cfg).norm == "l2" else 1.0
    changes: dict[str, float | bool] = {"eps": eps}
    if "random_start" in attack_cfg:
        changes["random_start"] = False
    if "step_size" in attack_cfg:
        old = float(attack_cfg.eps)
        steps = int(attack_cfg.steps) if "steps" in attack_cfg else 1
        changes["step_size"] = float(attack_cfg.step_size) * eps / old if old > 0 else 2.5 * eps / steps
    return OmegaConf.merge(attack_cfg, changes)


HINTS = {
    "unavailable_gradients": "attack through BPDA (threat_model=white_box) or a differentiable surrogate "
                             "(threat_model.bpda=surrogate)",
    "unstable_predictions": "average the loss over draws (threat_model.eot_samples) or attack a smoother surrogate",
    "silent_success": "keep the best iterate, or judge iterates with more EOT samples",
    "incomplete_optimisation": "raise attack.steps (or the suite's steps) until the loss settles",
    "transfer_failure": "use a surrogate closer to the defense (threat_model.bpda=surrogate) or EOT",
    "randomness_detected": "declare the defense random (randomized = True) so EOT and the draws apply",
    "query_stronger": "the white-box gradients are masked: try a surrogate, more EOT samples or another loss",
}


def share_above(name: str, value: float, limit: float, what: str) -> str | None:
    """Fires when an indicator's share or score `value` exceeds `limit`; the message ends with its hint."""
    if math.isnan(value) or value <= limit:
        return None
    return f"{what} {value:.2%} (> {limit:.0%}); try: {HINTS[name]}"


def query_stronger(white_box: float, query: float, max_gap: float) -> str | None:
    """AutoAttack's check: the query attack's robust accuracy is lower than the white-box suite's by > max_gap."""
    if white_box - query > max_gap:
        return (f"a query-only attack leaves {query:.2%} robust accuracy, the white-box suite {white_box:.2%} "
                f"(gap > {max_gap:.0%}); try: {HINTS['query_stronger']}")
    return None


@dataclass
class Probe:
    """What the cheap indicators measure on: the first test images and labels, the model the lead
    gradient attack of the suite differentiates (None without one), the defended classifier (a
    fresh draw per call) and a generator for the noise."""

    images: torch.Tensor
    labels: torch.Tensor
    attacked: nn.Module | None
    defended: nn.Module
    generator: torch.Generator | None = None


@dataclass
class RunEvidence:
    """What the checks read from a run: its metrics (the suite's trace indicators among them), its
    robust accuracy on the first n images, a way to re-attack them, the matching runs under other
    threat models, the probe and the image size."""

    metrics: dict[str, float]
    sample_accuracy: Callable[[int], float]
    sample_attack: SampleAttack
    other_runs: Callable[[], dict[str, float]]
    probe: Probe
    n_pixels: int


@dataclass
class CheckReport:
    """Outcome of every check that ran: 'ok', a flag message, or 'skipped: why'; and the indicators' values."""

    outcomes: dict[str, str] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, message: str | None, value: float | None = None) -> None:
        self.outcomes[name] = "ok" if message is None else f"FLAG: {message}"
        if message is not None:
            self.flags[name] = message
        if value is not None:
            self.metrics[f"indicator_{name}"] = value

    def skip(self, name: str, why: str) -> None:
        self.outcomes[name] = f"skipped: {why}"

    def tags(self) -> dict[str, str]:
        return {f"check.{name}": outcome for name, outcome in self.outcomes.items()}


def lead_attack_config(attack_cfg: DictConfig) -> DictConfig:
    """The attack the strength and unbounded checks re-run: a single attack's config, or a suite's
    first attack with steps and eps that uses gradients (else its first attack), resolved so that it
    stands alone (a suite's attacks interpolate the suite's `eps`)."""
    if "attacks" not in attack_cfg:
        return attack_cfg
    nodes = [OmegaConf.create(OmegaConf.to_container(node, resolve=True)) for node in attack_cfg.attacks.values()]
    for node in nodes:
        if "steps" in node and "eps" in node and build_attack(node).uses_gradients:
            return node
    return nodes[0]


def run_checks(cfg: DictConfig, defense: Defense, suite: AttackSuite, evidence: RunEvidence) -> CheckReport:
    """Run the checks switched on in `cfg.checks` (see the module docstring)."""
    checks, tm = cfg.checks, cfg.threat_model
    threat_model = build_threat_model(tm)
    entries = suite.plan(threat_model, defense)
    report = CheckReport()
    gradient_entries = [entry for entry in entries if entry.attack.uses_gradients]
    if checks.random_without_eot:
        eot = [entry.threat_model.eot_samples for entry in gradient_entries if isinstance(entry.threat_model, WhiteBox)]
        report.record("random_without_eot", random_without_eot(defense, gradient_entries[0].attack, tm.name, min(eot))
                      if eot else None)
    if checks.transfer_stronger:
        report.record("transfer_stronger", transfer_stronger(tm.name, evidence.metrics["robust_accuracy"],
                                                             evidence.other_runs(), checks.transfer_tolerance))
    _indicators(report, checks.indicators, defense, evidence)
    lead_cfg = lead_attack_config(cfg.attack)
    clean_accuracies = (evidence.metrics.get("clean_accuracy"), evidence.metrics.get("defended_clean_accuracy"))
    if checks.classifier_at_chance and clean_accuracies[0] is not None:
        report.record("classifier_at_chance", classifier_at_chance(
            clean_accuracies[0], cfg.dataset.num_classes, checks.chance_margin, cfg.train))
    if checks.defended_clean_drop and None not in clean_accuracies:
        report.record("defended_clean_drop", defended_clean_drop(
            *clean_accuracies, checks.clean_drop_tolerance, cfg.defense.name, cfg.train.preprocess is not None))
    if checks.strength.enabled:
        _strength(report, cfg, lead_cfg, defense, threat_model, evidence)
    if checks.unbounded.enabled:
        _unbounded(report, cfg, lead_cfg, threat_model, evidence)
    if checks.query.enabled:
        _query(report, cfg, threat_model, evidence)
    return report


def _indicators(report: CheckReport, spec: DictConfig, defense: Defense, evidence: RunEvidence) -> None:
    """Indicators 1-5 of Pintor et al. 2022 and AutoAttack's randomness check (cheap)."""
    probe, metrics = evidence.probe, evidence.metrics
    n = spec.n_images
    images, labels = probe.images[:n], probe.labels[:n]
    if probe.attacked is None:
        for name in ("unavailable_gradients", "unstable_predictions"):
            if spec[name]:
                report.skip(name, "the suite has no gradient attack")
    else:
        if spec.unavailable_gradients:
            value = indicators.unavailable_gradients(probe.attacked, images, labels).float().mean().item()
            report.record("unavailable_gradients", share_above("unavailable_gradients", value, spec.max_unavailable,
                                                               "zero or failing loss gradient on"), value)
        if spec.unstable_predictions:
            value = indicators.unstable_predictions(probe.attacked, images, labels, spec.noise_radius,
                                                    spec.noise_draws, probe.generator).mean().item()
            report.record("unstable_predictions", share_above("unstable_predictions", value, spec.max_unstable,
                                                              "loss change under small noise (mean score)"), value)
    for name, limit, what in (("silent_success", spec.max_silent, "an iterate fooled the model, the result did not, on"),
                              ("incomplete_optimisation", spec.max_incomplete, "loss still rising at the last steps on"),
                              ("transfer_failure", spec.max_transfer_failure,
                               "fooled the surrogate but not the defended model:")):
        if spec[name]:
            value = metrics[f"indicator_{name}"]
            report.record(name, share_above(name, value, limit, what), value)
    if spec.randomness_detected:
        value = indicators.randomness_detected(probe.defended, images).float().mean().item()
        message = None
        if value > 0 and not defense.randomized:
            message = (f"5 forward passes of the defended classifier disagree on {value:.2%} of the images but "
                       f"{type(defense).__name__} is not declared random; try: {HINTS['randomness_detected']}")
        report.record("randomness_detected", message, value)


def _strength(report: CheckReport, cfg: DictConfig, lead_cfg: DictConfig, defense: Defense,
              threat_model: ThreatModel, evidence: RunEvidence) -> None:
    spec = cfg.checks.strength
    stronger_cfg = stronger_attack_config(lead_cfg, spec.factor)
    more_eot = isinstance(threat_model, WhiteBox) and defense.randomized
    if stronger_cfg is None and not more_eot:
        report.skip("strength", f"attack {lead_cfg.name} has no steps and the defense is not random")
        return
    attack = build_attack(stronger_cfg if stronger_cfg is not None else lead_cfg)
    stronger = threat_model.with_eot_samples(threat_model.eot_samples * spec.factor) if more_eot else threat_model
    what = " and ".join(part for part, used in ((f"{spec.factor}x steps", stronger_cfg is not None),
                                                  (f"{spec.factor}x EOT samples", more_eot)) if used)
    strong = evidence.sample_attack(as_suite(attack, str(lead_cfg.name)), stronger, spec.n_images)
    if "attacks" in cfg.attack:   # a suite: compare with its lead attack alone, re-run on the sample
        base = evidence.sample_attack(as_suite(build_attack(lead_cfg), str(lead_cfg.name)), threat_model,
                                      spec.n_images)["robust_accuracy"]
    else:
        base = evidence.sample_accuracy(spec.n_images)
    report.record("strength", strength_rises(base, strong["robust_accuracy"], what, spec.tolerance))


def _unbounded(report: CheckReport, cfg: DictConfig, lead_cfg: DictConfig, threat_model: ThreatModel,
               evidence: RunEvidence) -> None:
    spec = cfg.checks.unbounded
    if not isinstance(threat_model, WhiteBox):
        report.skip("unbounded", "only meaningful white-box (a transfer attack need not reach 0 %)")
        return
    unbounded_cfg = unbounded_attack_config(lead_cfg, evidence.n_pixels)
    if unbounded_cfg is None or not build_attack(lead_cfg).uses_gradients:
        report.skip("unbounded", f"attack {lead_cfg.name} has no eps or uses no gradients")
        return
    metrics = evidence.sample_attack(as_suite(build_attack(unbounded_cfg), "unbounded"), threat_model, spec.n_images)
    correct = metrics["n_images"] - metrics["broken_clean"]
    failure = metrics["robust_accuracy"] * metrics["n_images"] / correct if correct else math.nan
    report.record("unbounded", unbounded_not_zero(metrics["robust_accuracy"], spec.max_accuracy))
    report.metrics["indicator_unconstrained_failure"] = failure


def _query(report: CheckReport, cfg: DictConfig, threat_model: ThreatModel, evidence: RunEvidence) -> None:
    spec = cfg.checks.query
    if not isinstance(threat_model, WhiteBox):
        report.skip("query_stronger", "compares against a white-box suite")
        return
    oracle = WhiteBox("identity", 1, threat_model.n_draws)   # a query attack only calls the defended forward
    query = evidence.sample_attack(as_suite(build_attack(spec.attack), "query"), oracle, spec.n_images)
    report.record("query_stronger", query_stronger(evidence.sample_accuracy(spec.n_images), query["robust_accuracy"],
                                                   spec.max_gap), query["robust_accuracy"])
