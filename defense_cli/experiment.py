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

from defense_cli.attacks import Attack, attack_target, build_attack
from defense_cli.attacks.threat_models import WhiteBoxSettings, check_bpda_mode
from defense_cli.config import validate
from defense_cli.data import DatasetSplits, load_dataset
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.errors import ConfigError
from defense_cli.evaluation import evaluate
from defense_cli.report import print_table, results_table
from defense_cli.results import per_draw_accuracies, summarize
from defense_cli.tracking import Tracker, current_parent_run, flatten, git_commit, home_dir
from defense_cli.training.adversarial import adversarial_configs
from defense_cli.training.cache import cache_key
from defense_cli.training.classifiers import TrainedClassifier, obtain_classifier, test_accuracy
from defense_cli.validity import CheckReport, run_checks

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


def setting_key(cfg: DictConfig) -> str:
    """Hash of what a result depends on besides the threat model: runs that differ only in their
    threat model share it (the validity check compares them)."""
    return cache_key({key: cfg[key] for key in ("dataset", "model", "train", "defense", "attack", "seed")})


def run_tags(cfg: DictConfig, stage: str) -> dict[str, str]:
    commit = git_commit()
    return {"dataset": cfg.dataset.name, "model": cfg.model.name, "defense": cfg.defense.name,
            "attack": cfg.attack.name, "threat_model": cfg.threat_model.name, "stage": stage,
            "setting": setting_key(cfg), "git_commit": commit, "mlflow.source.git.commit": commit}


def white_box_settings(cfg: DictConfig) -> WhiteBoxSettings:
    """`threat_model.bpda` and `threat_model.eot_samples` (defaults for the other threat models)."""
    return WhiteBoxSettings(cfg.threat_model.get("bpda", "identity"), int(cfg.threat_model.get("eot_samples", 1)))


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
    configs = adversarial_configs(cfg.train)
    if configs is not None:
        build_attack(configs[0])
        if configs[1] is not None:
            build_defense(configs[1])
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
    train_cfg = cfg.train
    if model_cfg is not None:  # a black-box source model: plain training under its own seed
        train_cfg = OmegaConf.merge(cfg.train, {"seed": seed, "preprocess": "none", "adversarial": "none"})
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
    settings = white_box_settings(cfg)
    if cfg.threat_model.name == "white_box":
        check_bpda_mode(defense, settings)  # a user error: raise before the MLflow run opens
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

        n_draws = int(cfg.threat_model.get("n_draws", 1))
        target = attack_target(cfg.threat_model.name, attack, trained.model, defense, source_model, generator,
                               settings)
        ev = evaluate(trained.model, defense, attack, target, p.splits.test, cfg.eval_batch_size, p.device,
                      generator, cfg.num_samples_grid, n_draws)
        metrics = {**summarize(ev), "train_seconds": trained.seconds,
                   "classifier_train_accuracy": trained.train_accuracy}
        run.metrics(metrics)
        run.series({f"epoch_{name}": values for name, values in trained.history.items()})
        run.series({"robust_accuracy_draw": per_draw_accuracies(ev)}, first_step=0)

        checks = _validity(cfg, p, trained.model, defense, attack, ev, metrics["robust_accuracy"], source_model)
        run.tags({"attack_strength": attack_strength(attack, cfg, defense),
                  "classifier_cache_hit": str(trained.cache_hit), "classifier_key": trained.key, **checks.tags()})
        run.json({**metrics, "per_draw_robust_accuracy": per_draw_accuracies(ev), "checks": checks.outcomes},
                 "metrics.json")
        _log_grid(run, ev, p.splits.classes)
    context = {"data": f"{cfg.dataset.name} ({int(metrics['n_images'])} test images)",
               "model": cfg.model.name, "defense": repr(defense), "attack": attack_strength(attack, cfg, defense),
               "threat model": cfg.threat_model.name, "device": str(p.device), "mlflow run": run.run_id}
    print_table(results_table("defense-cli run", metrics, context, checks.flags))
    return metrics


def attack_strength(attack: Attack, cfg: DictConfig, defense) -> str:
    """The attack's description plus how it went through the defense (BPDA mode, EOT samples)."""
    if cfg.threat_model.name != "white_box" or not attack.uses_gradients:
        return attack.describe()
    settings = white_box_settings(cfg)
    eot = settings.eot_samples if defense.randomized else 1
    return f"{attack.describe()} + BPDA({settings.bpda}), EOT samples={eot}"


def _validity(cfg: DictConfig, p: Prepared, model: torch.nn.Module, defense, attack: Attack, ev,
              robust_accuracy: float, source_model) -> CheckReport:
    """The validity checks switched on in `cfg.checks` (see defense_cli/validity.py)."""
    defended_adv, labels = ev.cat("defended_adversarial"), ev.cat("labels")

    def sample_accuracy(n: int) -> float:
        return (defended_adv[:n] == labels[:n]).float().mean().item()

    def sample_attack(stronger: Attack, settings: WhiteBoxSettings, n: int) -> float:
        generator = torch.Generator(device=p.device).manual_seed(cfg.seed)
        target = attack_target(cfg.threat_model.name, stronger, model, defense, source_model, generator, settings)
        sample = evaluate(model, defense, stronger, target, p.splits.test.head(n), cfg.eval_batch_size, p.device,
                          generator, 0)
        return summarize(sample)["robust_accuracy"]

    def other_runs() -> dict[str, float]:
        found = p.tracker.finished_runs({"setting": setting_key(cfg)}, "robust_accuracy")
        want_white = cfg.threat_model.name != "white_box"
        return {run_id: accuracy for run_id, (tags, accuracy) in found.items()
                if (tags.get("threat_model") == "white_box") == want_white}

    n_pixels = p.splits.test.float_images(slice(0, 1))[0].numel()
    return run_checks(cfg, defense, attack, robust_accuracy, sample_accuracy, sample_attack, n_pixels, other_runs)


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
