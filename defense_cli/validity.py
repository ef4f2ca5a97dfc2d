"""Validity checks of a robustness result (Athalye et al. 2018 section 5; Carlini et al. 2019, "On
evaluating adversarial robustness", section 5): signs that the attack, not the defense, is weak.

Each check returns None when it stays quiet, or a one-line message when it fires. `run_checks`
runs the ones switched on in the `checks:` block of the config; the cheap ones are on by default,
the ones that re-attack a sample are off (they cost a second attack).

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
  above about 0 %: the gradient does not lead anywhere (gradient masking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from defense_cli.attacks import Attack, ThreatModel, build_attack, build_threat_model
from defense_cli.attacks.threat_models import WhiteBox
from defense_cli.defenses import Defense

#: (attack, threat model, n_images) -> robust accuracy of that attack on the first n test images
SampleAttack = Callable[[Attack, ThreatModel, int], float]


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


@dataclass
class CheckReport:
    """Outcome of every check that ran: 'ok', a flag message, or 'skipped: why'."""

    outcomes: dict[str, str] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)

    def record(self, name: str, message: str | None) -> None:
        self.outcomes[name] = "ok" if message is None else f"FLAG: {message}"
        if message is not None:
            self.flags[name] = message

    def skip(self, name: str, why: str) -> None:
        self.outcomes[name] = f"skipped: {why}"

    def tags(self) -> dict[str, str]:
        return {f"check.{name}": outcome for name, outcome in self.outcomes.items()}


def run_checks(cfg: DictConfig, defense: Defense, attack: Attack, robust_accuracy: float,
               sample_accuracy: Callable[[int], float], sample_attack: SampleAttack, n_pixels: int,
               other_runs: Callable[[], dict[str, float]],
               clean_accuracies: tuple[float, float] | None = None) -> CheckReport:
    """Run the checks switched on in `cfg.checks`.

    `sample_accuracy(n)` is the run's robust accuracy on its first n test images; `sample_attack`
    re-attacks them; `other_runs()` finds the matching runs under the other threat models;
    `clean_accuracies` is (clean, defended clean) accuracy of the run.
    """
    checks, tm = cfg.checks, cfg.threat_model
    threat_model = build_threat_model(tm)
    report = CheckReport()
    if checks.random_without_eot and isinstance(threat_model, WhiteBox):
        report.record("random_without_eot",
                      random_without_eot(defense, attack, tm.name, threat_model.eot_samples))
    elif checks.random_without_eot:
        report.record("random_without_eot", None)
    if checks.transfer_stronger:
        report.record("transfer_stronger",
                      transfer_stronger(tm.name, robust_accuracy, other_runs(), checks.transfer_tolerance))
    if checks.classifier_at_chance and clean_accuracies is not None:
        report.record("classifier_at_chance", classifier_at_chance(
            clean_accuracies[0], cfg.dataset.num_classes, checks.chance_margin, cfg.train))
    if checks.defended_clean_drop and clean_accuracies is not None:
        report.record("defended_clean_drop", defended_clean_drop(
            *clean_accuracies, checks.clean_drop_tolerance, cfg.defense.name, cfg.train.preprocess is not None))
    if checks.strength.enabled:
        _strength(report, cfg, defense, threat_model, sample_accuracy, sample_attack)
    if checks.unbounded.enabled:
        _unbounded(report, cfg, threat_model, sample_attack, n_pixels)
    return report


def _strength(report: CheckReport, cfg: DictConfig, defense: Defense, threat_model: ThreatModel,
              sample_accuracy: Callable[[int], float], sample_attack: SampleAttack) -> None:
    spec = cfg.checks.strength
    stronger_cfg = stronger_attack_config(cfg.attack, spec.factor)
    more_eot = isinstance(threat_model, WhiteBox) and defense.randomized
    if stronger_cfg is None and not more_eot:
        report.skip("strength", f"attack {cfg.attack.name} has no steps and the defense is not random")
        return
    attack = build_attack(stronger_cfg if stronger_cfg is not None else cfg.attack)
    stronger = threat_model.with_eot_samples(threat_model.eot_samples * spec.factor) if more_eot else threat_model
    what = " and ".join(part for part, used in ((f"{spec.factor}x steps", stronger_cfg is not None),
                                                  (f"{spec.factor}x EOT samples", more_eot)) if used)
    report.record("strength", strength_rises(sample_accuracy(spec.n_images),
                                             sample_attack(attack, stronger, spec.n_images), what, spec.tolerance))


def _unbounded(report: CheckReport, cfg: DictConfig, threat_model: ThreatModel, sample_attack: SampleAttack,
               n_pixels: int) -> None:
    spec = cfg.checks.unbounded
    if not isinstance(threat_model, WhiteBox):
        report.skip("unbounded", "only meaningful white-box (a transfer attack need not reach 0 %)")
        return
    unbounded_cfg = unbounded_attack_config(cfg.attack, n_pixels)
    if unbounded_cfg is None or not build_attack(cfg.attack).uses_gradients:
        report.skip("unbounded", f"attack {cfg.attack.name} has no eps or uses no gradients")
        return
    accuracy = sample_attack(build_attack(unbounded_cfg), threat_model, spec.n_images)
    report.record("unbounded", unbounded_not_zero(accuracy, spec.max_accuracy))
