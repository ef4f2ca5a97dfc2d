"""The `run` task: data -> classifier -> defense -> threat model + attack -> metrics -> MLflow."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from defense_cli.attacks import Attack, ThreatModel, build_attack, build_threat_model
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.evaluation import evaluate
from defense_cli.results_table import print_table, results_table
from defense_cli.results import per_draw_accuracies, search_score, summarize
from defense_cli.tasks.prepare import (Prepared, classifier, prepare, run_name, run_tags, setting_key,
                                       source_classifier)
from defense_cli.tracking import current_parent_run, flatten, keep_results
from defense_cli.validity import CheckReport, run_checks


def run_experiment(cfg: DictConfig) -> dict[str, float]:
    """The `run` task. Returns the metrics it logged (with `search_score` among them)."""
    p = prepare(cfg)
    attack = build_attack(cfg.attack)
    defense = build_defense(cfg.defense)
    threat_model = build_threat_model(cfg.threat_model)
    with p.tracker.run(run_name(cfg), run_tags(cfg, "run"), current_parent_run()) as run:
        run.params(flatten(cfg))
        run.text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        trained = classifier(p)
        generator = torch.Generator(device=p.device).manual_seed(cfg.seed)
        defense.prepare(DefenseContext(classifier=trained.model, train_set=p.splits.train, cache_dir=p.cache,
                                       device=p.device, seed=cfg.seed))

        def source_model() -> torch.nn.Module:
            return source_classifier(p, cfg.threat_model.source).model

        target = threat_model.target(attack, trained.model, defense, source_model, generator)
        ev = evaluate(trained.model, defense, attack, target, p.splits.test, cfg.eval_batch_size, p.device,
                      generator, cfg.num_samples_grid, threat_model.n_draws)
        metrics = {**summarize(ev), "train_seconds": trained.seconds,
                   "classifier_train_accuracy": trained.train_accuracy}
        metrics["search_score"] = search_score(metrics, cfg.search.min_clean_accuracy)
        keep_results({"metrics": metrics, "run_id": run.run_id, "config": OmegaConf.to_container(cfg, resolve=True)})
        run.metrics(metrics)
        run.series({f"epoch_{name}": values for name, values in trained.history.items()})
        run.series({"robust_accuracy_draw": per_draw_accuracies(ev)}, first_step=0)

        checks = _validity(cfg, p, trained.model, defense, attack, ev, metrics, source_model)
        run.tags({"attack_strength": threat_model.describe(attack, defense),
                  "classifier_cache_hit": str(trained.cache_hit), "classifier_key": trained.key, **checks.tags()})
        run.json({**metrics, "per_draw_robust_accuracy": per_draw_accuracies(ev), "checks": checks.outcomes},
                 "metrics.json")
        _log_grid(run, ev, p.splits.classes)
    context = {"data": f"{cfg.dataset.name} ({int(metrics['n_images'])} test images)",
               "model": cfg.model.name, "defense": repr(defense), "attack": threat_model.describe(attack, defense),
               "threat model": cfg.threat_model.name, "device": str(p.device), "mlflow run": run.run_id}
    print_table(results_table("defense-cli run", metrics, context, checks.flags))
    return metrics


def _validity(cfg: DictConfig, p: Prepared, model: torch.nn.Module, defense, attack: Attack, ev,
              metrics: dict[str, float], source_model) -> CheckReport:
    """The validity checks switched on in `cfg.checks` (see defense_cli/validity.py)."""
    defended_adv, labels = ev.cat("defended_adversarial"), ev.cat("labels")

    def sample_accuracy(n: int) -> float:
        return (defended_adv[:n] == labels[:n]).float().mean().item()

    def sample_attack(stronger: Attack, threat_model: ThreatModel, n: int) -> float:
        generator = torch.Generator(device=p.device).manual_seed(cfg.seed)
        target = threat_model.target(stronger, model, defense, source_model, generator)
        sample = evaluate(model, defense, stronger, target, p.splits.test.head(n), cfg.eval_batch_size, p.device,
                          generator, 0)
        return summarize(sample)["robust_accuracy"]

    def other_runs() -> dict[str, float]:
        found = p.tracker.finished_runs({"setting": setting_key(cfg)}, "robust_accuracy")
        want_white = cfg.threat_model.name != "white_box"
        return {run_id: accuracy for run_id, (tags, accuracy) in found.items()
                if (tags.get("threat_model") == "white_box") == want_white}

    n_pixels = p.splits.test.float_images(slice(0, 1))[0].numel()
    return run_checks(cfg, defense, attack, metrics["robust_accuracy"], sample_accuracy, sample_attack, n_pixels, other_runs,
                      (metrics["clean_accuracy"], metrics["defended_clean_accuracy"]))


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


