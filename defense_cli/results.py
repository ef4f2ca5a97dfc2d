"""Turn an Evaluation into the metrics a run logs and prints."""

from __future__ import annotations

import math

import torch

from defense_cli import metrics as m
from defense_cli.image_quality import mean_psnr
from defense_cli.attacks.suite import CLEAN
from defense_cli.evaluation import Evaluation


def summarize(ev: Evaluation) -> dict[str, float]:
    """All scalar metrics of one evaluation (NaN where undefined). The suite does not attack a point
    the defended classifier already gets wrong clean (its adversarial image is the clean image), so
    `undefended_attack_success_rate` is counted over the points it attacked; `undefended_robust_accuracy`
    is the bare classifier on the suite's adversarial images, over every point."""
    labels = ev.cat("labels")
    clean, dclean = ev.cat("clean"), ev.cat("defended_clean")
    adv, dadv = ev.cat("adversarial"), ev.cat("defended_adversarial")
    l2, linf = ev.cat("l2"), ev.cat("linf")
    fooled = (clean == labels) & (adv != labels)
    attacked = ev.cat("broken_by") != CLEAN
    n = len(labels)
    return {
        "n_images": float(n),
        "clean_accuracy": m.accuracy(clean, labels),
        "defended_clean_accuracy": m.accuracy(dclean, labels),
        "undefended_robust_accuracy": m.accuracy(adv, labels),
        "robust_accuracy": m.mean_or_nan(ev.cat("robust")),
        "attack_success_rate": m.attack_success_rate(dclean, dadv, labels),
        "undefended_attack_success_rate": m.attack_success_rate(clean[attacked], adv[attacked], labels[attacked]),
        "destruction_rate": m.destruction_rate(clean, adv, dadv, labels),
        "mean_l2": m.mean_or_nan(l2),
        "mean_linf": m.mean_or_nan(linf),
        "mean_l2_successful": m.mean_or_nan(l2[fooled]),
        "mean_linf_successful": m.mean_or_nan(linf[fooled]),
        "defended_clean_psnr": mean_psnr(ev.cat("psnr")),
        "defended_clean_ssim": m.mean_or_nan(ev.cat("ssim")),
        "attack_seconds": ev.attack_seconds,
        "defense_seconds": ev.defense_seconds,
        "defense_seconds_per_image": ev.defense_seconds / ev.defended_images if ev.defended_images else math.nan,
        "gradient_evaluations": float(ev.gradient_evaluations),
        "queries": float(ev.queries),
        **draw_metrics(ev),
        **suite_metrics(ev),
        **trace_indicators(ev),
    }


def suite_metrics(ev: Evaluation) -> dict[str, float]:
    """Per attack of the suite: robust accuracy (alone when run independently, after it and the
    attacks before it in a cascade) and the number of points it broke first; `broken_clean` counts
    the points the defense misclassifies before any attack."""
    labels, broken_by = ev.cat("labels"), ev.cat("broken_by")
    if not len(labels):
        return {}
    key = "robust_accuracy_{}" if not ev.cascade else "robust_accuracy_after_{}"
    out: dict[str, float] = {"broken_clean": float((broken_by == CLEAN).sum())}
    for index, name in enumerate(ev.entries):
        out[key.format(name)] = m.mean_or_nan(torch.cat(ev.robust_under[name]))
        out[f"broken_by_{name}"] = float((broken_by == index).sum())
    return out


def trace_indicators(ev: Evaluation) -> dict[str, float]:
    """The indicators of attack failure read off the suite's own attacks (Pintor et al. 2022, sec. 3):
    silent success (share of the points still robust at the end of which an iterate fooled the
    attacked model), incomplete optimisation (share of the gradient attacks' loss traces, on the
    points each attack failed to break, still rising over their last steps) and transfer failure (share of the final adversarial images
    that fool the surrogate the attack differentiated but not the defended classifier). NaN where
    nothing was measured."""
    robust, fooled = ev.cat("robust"), ev.cat("iterate_fooled")
    incomplete, surrogate_fooled = ev.cat("incomplete"), ev.cat("surrogate_fooled")
    target_robust = ev.cat("target_robust")
    transfers = surrogate_fooled.bool() if len(surrogate_fooled) else surrogate_fooled
    return {
        "indicator_silent_success": m.mean_or_nan(fooled[robust].float()) if len(robust) else math.nan,
        "indicator_incomplete_optimisation": m.mean_or_nan(incomplete.float()),
        "indicator_transfer_failure": m.mean_or_nan(target_robust[transfers].float()) if len(transfers) else math.nan,
    }


def per_draw_accuracies(ev: Evaluation) -> list[float]:
    """Robust accuracy under each independent draw of a random defense ([] when not drawn)."""
    if not ev.draws:
        return []
    draws, labels = torch.cat(ev.draws, dim=1), ev.cat("labels")
    return [m.accuracy(row, labels) for row in draws]


def draw_metrics(ev: Evaluation) -> dict[str, float]:
    """Mean, std and worst case of robust accuracy over the defense's draws (random defenses).

    `robust_accuracy_worst_draw` is the lowest per-draw accuracy; `robust_accuracy_every_draw` the
    share of final adversarial images classified correctly under every one of these draws;
    `robust_accuracy_first_draw` the first draw alone (a single-draw count, shown for contrast: the
    headline `robust_accuracy` also requires every draw of every attack of the suite to fail).
    """
    accuracies = per_draw_accuracies(ev)
    if not accuracies:
        return {}
    draws, labels = torch.cat(ev.draws, dim=1), ev.cat("labels")
    values = torch.tensor(accuracies)
    return {
        "n_draws": float(len(accuracies)),
        "robust_accuracy_mean_over_draws": values.mean().item(),
        "robust_accuracy_std_over_draws": values.std(unbiased=True).item() if len(values) > 1 else 0.0,
        "robust_accuracy_worst_draw": values.min().item(),
        "robust_accuracy_every_draw": (draws == labels).all(0).float().mean().item() if len(labels) else math.nan,
        "robust_accuracy_first_draw": accuracies[0],
    }


def search_score(metrics: dict[str, float], min_clean_accuracy: float) -> float:
    """What a parameter search (hydra/sweeper=optuna, direction maximize) maximises: the worst-case
    robust accuracy (`robust_accuracy`: per example, every attack of the suite and, for a random
    defense, every draw during the attacks and every final draw must fail) when the defended clean
    accuracy reaches `min_clean_accuracy`; below that floor, the same minus 1, so that every trial
    under the floor ranks below every trial above it."""
    score = metrics["robust_accuracy"]
    return score if metrics["defended_clean_accuracy"] >= min_clean_accuracy else score - 1.0
