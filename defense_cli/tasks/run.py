"""The `run` task: data -> classifier -> defense -> threat model + attack -> metrics -> MLflow."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from defense_cli.attacks import ThreatModel, build_suite, build_threat_model
from defense_cli.attacks.bpda import DefendedClassifier
from defense_cli.attacks.checkpoint import SuiteCheckpoints
from defense_cli.attacks.suite import AttackSuite
from defense_cli.config import config_hash
from defense_cli.defenses import Defense, DefenseContext, build_defense
from defense_cli.evaluation import Evaluation, evaluate
from defense_cli.results_table import print_table, results_line, results_table
from defense_cli.results import per_draw_accuracies, search_score, summarize
from defense_cli.run_search import newest_finished_run, run_flags
from defense_cli.tasks.prepare import (Prepared, classifier, prepare, run_name, run_tags, setting_key,
                                       source_classifier)
from defense_cli.tracking import current_parent_run, flatten, keep_results
from defense_cli.validity import CheckReport, Probe, RunEvidence, run_checks


def run_experiment(cfg: DictConfig) -> dict[str, float]:
    """The `run` task. Returns the metrics it logged (with `search_score` among them); with
    `resume=true`, those of the FINISHED run that already computed this config, if there is one."""
    p = prepare(cfg)
    if cfg.resume and (stored := _reuse_finished_run(cfg, p)) is not None:
        return stored
    suite = build_suite(cfg.attack)
    defense = build_defense(cfg.defense)
    threat_model = build_threat_model(cfg.threat_model)
    with p.tracker.run(run_name(cfg), run_tags(cfg, "run"), current_parent_run()) as run:
        run.params(flatten(cfg))
        run.text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        trained = classifier(p)
        generator = torch.Generator(device=p.device).manual_seed(cfg.seed)
        defense.prepare(DefenseContext(classifier=trained.model, train_set=p.splits.train, cache_dir=p.cache,
                                       device=p.device, seed=cfg.seed))
        source_model = functools.cache(lambda: source_classifier(p, cfg.threat_model.source).model)
        checkpoints = suite_checkpoints(cfg, p)
        ev = evaluate(trained.model, defense, suite, threat_model, p.splits.test, cfg.eval_batch_size, p.device,
                      generator, cfg.num_samples_grid, source_model, checkpoints)
        metrics = {**summarize(ev), "train_seconds": trained.seconds,
                   "classifier_train_accuracy": trained.train_accuracy}
        checks = _validity(cfg, p, trained.model, defense, suite, threat_model, ev, metrics, source_model)
        metrics.update(checks.metrics)
        metrics["search_score"] = search_score(metrics, cfg.search.min_clean_accuracy)
        keep_results({"metrics": metrics, "run_id": run.run_id, "config": OmegaConf.to_container(cfg, resolve=True)})
        run.metrics(metrics)
        run.series({f"epoch_{name}": values for name, values in trained.history.items()})
        run.series({"robust_accuracy_draw": per_draw_accuracies(ev)}, first_step=0)
        strength = suite.describe(suite.plan(threat_model, defense), defense)
        run.tags({"attack_strength": strength[:5000], "classifier_cache_hit": str(trained.cache_hit),
                  "classifier_key": trained.key, "resumed_attacks": str(ev.resumed_attacks), **checks.tags()})
        run.json({**metrics, "per_draw_robust_accuracy": per_draw_accuracies(ev), "checks": checks.outcomes},
                 "metrics.json")
        _log_grid(run, ev, p.splits.classes)
        checkpoints.clear()
    context = {"data": f"{cfg.dataset.name} ({int(metrics['n_images'])} test images)",
               "model": cfg.model.name, "defense": repr(defense), "attack": strength,
               "threat model": cfg.threat_model.name, "device": str(p.device), "mlflow run": run.run_id}
    if cfg.quiet:
        print(results_line(run.run_id, metrics, len(checks.flags)))
    else:
        print_table(results_table("defense-cli run", ordered_metrics(metrics, ev), context, checks.flags))
    return metrics


def suite_checkpoints(cfg: DictConfig, p: Prepared) -> SuiteCheckpoints:
    """Where this config's attack suite keeps its checkpoints between attacks: a folder of the cache
    named by the config hash, so a run of the same config killed before its end resumes from them."""
    identity = config_hash(cfg)
    return SuiteCheckpoints(p.cache / "suite_checkpoints" / identity, identity)


def _reuse_finished_run(cfg: DictConfig, p: Prepared) -> dict[str, float] | None:
    """The metrics of the newest FINISHED `run` run with this config hash (None if there is none),
    printed as its results table; a sweep's parent run links it with the tag `reused.<run id>`."""
    identity = config_hash(cfg)
    run = newest_finished_run(p.tracker.uri, cfg.mlflow.experiment_name, identity)
    if run is None:
        return None
    run_id = run["run_id"]
    metrics = {key.removeprefix("metrics."): float(value) for key, value in run.items()
               if key.startswith("metrics.") and not pd.isna(value)}
    parent = current_parent_run()
    if parent:
        p.tracker.client.set_tag(parent, f"reused.{run_id}", str(run.get("tags.mlflow.runName", "")))
    keep_results({"metrics": metrics, "run_id": run_id, "reused": True,
                  "config": OmegaConf.to_container(cfg, resolve=True)})
    flags = dict(flag.split(": ", 1) for flag in run_flags(run))
    context = {"reused run": run_id, "finished": str(run["end_time"]), "config hash": identity,
               "attack": str(run.get("tags.attack_strength", ""))}
    if cfg.quiet:
        print(results_line(run_id, metrics, len(flags), "reused, not run again"))
    else:
        print_table(results_table("defense-cli run (resume=true: reused, not run again)", metrics, context, flags))
    return metrics


def ordered_metrics(metrics: dict[str, float], ev: Evaluation) -> dict[str, float]:
    """The worst case first (robust accuracy, then each suite attack's), then everything else."""
    head = ["robust_accuracy", "robust_accuracy_every_draw", "robust_accuracy_first_draw"]
    head += [key for name in ev.entries for key in (f"robust_accuracy_{name}", f"robust_accuracy_after_{name}",
                                                     f"broken_by_{name}")]
    first = {key: metrics[key] for key in head if key in metrics}
    return {**first, **{key: value for key, value in metrics.items() if key not in first}}


def _validity(cfg: DictConfig, p: Prepared, model: torch.nn.Module, defense: Defense, suite: AttackSuite,
              threat_model: ThreatModel, ev: Evaluation, metrics: dict[str, float], source_model) -> CheckReport:
    """The validity checks and indicators switched on in `cfg.checks` (see defense_cli/validity.py)."""
    robust = ev.cat("robust")

    def sample_accuracy(n: int) -> float:
        return robust[:n].float().mean().item()

    def sample_attack(sample_suite: AttackSuite, sample_threat_model: ThreatModel, n: int) -> dict[str, float]:
        generator = torch.Generator(device=p.device).manual_seed(cfg.seed)
        return summarize(evaluate(model, defense, sample_suite, sample_threat_model, p.splits.test.head(n),
                                  cfg.eval_batch_size, p.device, generator, 0, source_model))

    def other_runs() -> dict[str, float]:
        found = p.tracker.finished_runs({"setting": setting_key(cfg)}, "robust_accuracy")
        want_white = cfg.threat_model.name != "white_box"
        return {run_id: accuracy for run_id, (tags, accuracy) in found.items()
                if (tags.get("threat_model") == "white_box") == want_white}

    generator = torch.Generator(device=p.device).manual_seed(cfg.seed)
    images, labels = next(iter(p.splits.test.head(cfg.checks.indicators.n_images).batches(
        cfg.checks.indicators.n_images, device=p.device)))
    lead = next((entry for entry in suite.plan(threat_model, defense) if entry.attack.uses_gradients), None)
    attacked = None if lead is None else lead.threat_model.target(lead.attack, model, defense, source_model, generator)
    probe = Probe(images, labels, attacked, DefendedClassifier(model, defense, generator), generator)
    n_pixels = images[0].numel()
    evidence = RunEvidence(metrics, sample_accuracy, sample_attack, other_runs, probe, n_pixels)
    return run_checks(cfg, defense, suite, evidence)


def _log_grid(run, ev, classes) -> None:
    import tempfile

    from defense_cli.visualize import sample_grid

    if not ev.samples or not len(ev.samples["clean"]):
        return
    n = len(ev.samples["clean"])
    predictions = {"clean": ev.clean[0][:n], "adversarial": ev.adversarial[0][:n],
                   "defended": ev.defended_adversarial[0][:n]}
    with tempfile.TemporaryDirectory() as tmp:
        path = sample_grid(ev.samples, predictions, ev.labels[0][:n], classes, Path(tmp) / "samples.png")
        run.artifact(path)


