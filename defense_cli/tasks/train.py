"""The `train` task: train (or reuse) the classifier and report its test accuracy."""

from __future__ import annotations

import time

from omegaconf import DictConfig

from defense_cli.results_table import print_table, results_table
from defense_cli.tasks.prepare import classifier, prepare, run_tags
from defense_cli.tracking import current_parent_run, flatten
from defense_cli.training.classifiers import test_accuracy
from defense_cli.validity import classifier_at_chance


def train_only(cfg: DictConfig) -> dict[str, float]:
    """The `train` task: train (or reuse) the classifier, report its test accuracy."""
    p = prepare(cfg)
    with p.tracker.run(f"train-{cfg.dataset.name}-{cfg.model.name}", run_tags(cfg, "train"),
                       current_parent_run()) as run:
        run.params(flatten({"dataset": cfg.dataset, "model": cfg.model, "train": cfg.train}))
        start = time.perf_counter()
        trained = classifier(p)
        metrics = {"test_accuracy": test_accuracy(trained.model, p.splits.test, p.device),
                   "classifier_train_accuracy": trained.train_accuracy,
                   "train_seconds": time.perf_counter() - start, "n_images": float(len(p.splits.test))}
        run.metrics(metrics)
        run.series({f"epoch_{name}": values for name, values in trained.history.items()})
        run.tags({"classifier_cache_hit": str(trained.cache_hit), "classifier_key": trained.key,
                  "classifier_path": str(trained.path)})
    context = {"data": cfg.dataset.name, "model": cfg.model.name, "cache": str(trained.path),
               "reused from cache": str(trained.cache_hit)}
    chance = classifier_at_chance(metrics["test_accuracy"], cfg.dataset.num_classes, cfg.checks.chance_margin, cfg.train)
    print_table(results_table("defense-cli train", metrics, context, {"classifier_at_chance": chance} if chance else {}))
    return metrics
