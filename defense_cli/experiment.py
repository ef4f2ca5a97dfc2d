"""One experiment: data -> classifier -> defense -> threat model + attack -> metrics -> MLflow.

Everything that can be wrong with the user's input (config values, dataset files, defense and
attack parameters) is checked before the MLflow run opens; from then on a failure marks the run
FAILED. This module is the `run` task; `defense-cli train` uses `train_only`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from defense_cli.attacks import attack_target, build_attack
from defense_cli.config import validate
from defense_cli.data import DatasetSplits, load_dataset
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.errors import ConfigError
from defense_cli.evaluation import evaluate
from defense_cli.report import print_table, results_table
from defense_cli.results import summarize
from defense_cli.tracking import Tracker, current_parent_run, flatten, git_commit, home_dir
from defense_cli.training.classifiers import TrainedClassifier, obtain_classifier, test_accuracy

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; `cuda` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available; use device=auto or cpu.")
    return torch.device(name)


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.cache_dir or home_dir(cfg) / ".defense_cli_cache").expanduser().resolve()


def run_name(cfg: DictConfig) -> str:
    return cfg.mlflow.run_name or "-".join(
        str(x) for x in (cfg.dataset.name, cfg.model.name, cfg.defense.name, cfg.attack.name, cfg.threat_model.name))


def run_tags(cfg: DictConfig, stage: str) -> dict[str, str]:
    return {"dataset": cfg.dataset.name, "model": cfg.model.name, "defense": cfg.defense.name,
            "attack": cfg.attack.name, "threat_model": cfg.threat_model.name, "stage": stage,
            "git_commit": git_commit(), "mlflow.source.git.commit": git_commit()}


@dataclass
class Prepared:
    """Validated inputs of a run, ready before any MLflow run is opened."""

    cfg: DictConfig
    device: torch.device
    cache: Path
    splits: DatasetSplits
    tracker: Tracker


def prepare(cfg: DictConfig) -> Prepared:
    """Validate the config and load the data; raises ConfigError on bad input, writes nothing."""
    validate(cfg)
    device = resolve_device(cfg.device)
    cache = cache_dir(cfg)
    splits = load_dataset(cfg.dataset, cache)
    try:
        tracker = Tracker.from_config(cfg)
    except Exception as err:
        raise ConfigError(f"mlflow.tracking_uri cannot be opened ({type(err).__name__}: {err}).") from err
    return Prepared(cfg, device, cache, splits, tracker)


def _classifier(p: Prepared, model_cfg: DictConfig | None = None, seed: int | None = None) -> TrainedClassifier:
    cfg = p.cfg
    train_cfg = cfg.train if seed is None else OmegaConf.merge(cfg.train, {"seed": seed})
    preprocess = cfg.train.get("preprocess", "none")
    preprocess_cfg = None
    if preprocess != "none" and model_cfg is None:
        from defense_cli.config import compose_group_option

        preprocess_cfg = compose_group_option("defense", preprocess)
    return obtain_classifier(cfg.dataset, model_cfg or cfg.model, train_cfg, p.splits, p.cache, p.device,
                             preprocess_cfg)


def run_experiment(cfg: DictConfig) -> dict[str, float]:
    """The `run` task. Returns the metrics it logged."""
    p = prepare(cfg)
    attack = build_attack(cfg.attack)
    defense = build_defense(cfg.defense)
    with p.tracker.run(run_name(cfg), run_tags(cfg, "run"), current_parent_run()) as run:
        run.params(flatten(cfg))
        run.text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        trained = _classifier(p)
        generator = torch.Generator(device=p.device).manual_seed(cfg.seed)
        defense.prepare(DefenseContext(classifier=trained.model, train_set=p.splits.train, cache_dir=p.cache,
                                       device=p.device, seed=cfg.seed))

        def source_model() -> torch.nn.Module:
            source = cfg.threat_model.source
            return _classifier(p, source.model, source.train_seed).model

        target = attack_target(cfg.threat_model.name, attack, trained.model, defense, source_model, generator)
        ev = evaluate(trained.model, defense, attack, target, p.splits.test, cfg.eval_batch_size, p.device,
                      generator, cfg.num_samples_grid)
        metrics = {**summarize(ev), "train_seconds": trained.seconds,
                   "classifier_train_accuracy": trained.train_accuracy}
        run.metrics(metrics)
        run.series({f"epoch_{name}": values for name, values in trained.history.items()})
        run.tags({"attack_strength": attack.describe(), "classifier_cache_hit": str(trained.cache_hit),
                  "classifier_key": trained.key})
        run.json(metrics, "metrics.json")
        _log_grid(run, ev, p.splits.classes)
    context = {"data": f"{cfg.dataset.name} ({int(metrics['n_images'])} test images)",
               "model": cfg.model.name, "defense": repr(defense), "attack": attack.describe(),
               "threat model": cfg.threat_model.name, "device": str(p.device), "mlflow run": run.run_id}
    print_table(results_table("defense-cli run", metrics, context))
    return metrics


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


def train_only(cfg: DictConfig) -> dict[str, float]:
    """The `train` task: train (or reuse) the classifier, report its test accuracy."""
    p = prepare(cfg)
    with p.tracker.run(f"train-{cfg.dataset.name}-{cfg.model.name}", run_tags(cfg, "train"),
                       current_parent_run()) as run:
        run.params(flatten({"dataset": cfg.dataset, "model": cfg.model, "train": cfg.train}))
        start = time.perf_counter()
        trained = _classifier(p)
        metrics = {"test_accuracy": test_accuracy(trained.model, p.splits.test, p.device),
                   "classifier_train_accuracy": trained.train_accuracy,
                   "train_seconds": time.perf_counter() - start, "n_images": float(len(p.splits.test))}
        run.metrics(metrics)
        run.series({f"epoch_{name}": values for name, values in trained.history.items()})
        run.tags({"classifier_cache_hit": str(trained.cache_hit), "classifier_key": trained.key,
                  "classifier_path": str(trained.path)})
    context = {"data": cfg.dataset.name, "model": cfg.model.name, "cache": str(trained.path),
               "reused from cache": str(trained.cache_hit)}
    print_table(results_table("defense-cli train", metrics, context))
    return metrics
