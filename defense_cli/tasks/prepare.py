"""What every task does before its MLflow run opens: validate the config, load the data, open the
tracker; and the classifier train-or-load shared by the tasks.

Everything that can be wrong with the user's input (config values, dataset files, defense and
attack parameters) is checked here, before the MLflow run opens; from then on a failure marks the
run FAILED.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from defense_cli.artifact_cache import cache_key
from defense_cli.attacks import build_attack, build_suite, build_threat_model
from defense_cli.attacks.threat_models import BlackBox
from defense_cli.config import config_hash, validate
from defense_cli.data import Dataset, DatasetSplits, load_dataset
from defense_cli.defenses import build_defense
from defense_cli.environment import git_commit
from defense_cli.errors import ConfigError, TrackingUnavailable
from defense_cli.instantiate import build_from_config
from defense_cli.models import build_classifier
from defense_cli.tracking import Tracker, check_server, home_dir, is_server, tracking_uri
from defense_cli.training.classifiers import TrainedClassifier, obtain_classifier, plain_training
from defense_cli.training.repr import RePrSettings


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
    """`mlflow.run_name`, or dataset-model-defense-attack-threat model; a sweep's job adds the
    values that differ between its jobs (`... attack.eps=0.05`)."""
    base = cfg.mlflow.run_name or "-".join(
        str(x) for x in (cfg.dataset.name, cfg.model.name, cfg.defense.name, cfg.attack.name, cfg.threat_model.name))
    return " ".join([base, *swept_values()])


#: an override value that a sweep expands: a,b or range(...), choice(...), glob(...), interval(...)
SWEEP_VALUE = re.compile(r",|^(range|choice|glob|interval)\(")


def swept_values() -> list[str]:
    """`key=value` of this sweep job for each key the sweep varies (values as written: 0.15, not
    0.15000000000000002); empty outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    swept = {arg.split("=", 1)[0] for arg in sys.argv[1:] if "=" in arg and SWEEP_VALUE.search(arg.split("=", 1)[1])}
    job = [o.split("=", 1) for o in HydraConfig.get().overrides.task if "=" in o]
    return [f"{key}={_as_written(value)}" for key, value in job if not swept or key in swept]


def _as_written(value: str) -> str:
    """A float as its shortest 15-digit form when that is shorter (range()'s 0.15000000000000002)."""
    try:
        short = f"{float(value):.15g}"
    except ValueError:
        return value
    return short if len(short) < len(value) else value


def setting_key(cfg: DictConfig) -> str:
    """Hash of what a result depends on besides the threat model: runs that differ only in their
    threat model share it (the validity check compares them)."""
    return cache_key({key: cfg[key] for key in ("dataset", "model", "train", "defense", "attack", "seed")})


def run_tags(cfg: DictConfig, stage: str) -> dict[str, str]:
    commit = git_commit()
    return {"dataset": cfg.dataset.name, "model": cfg.model.name, "defense": cfg.defense.name,
            "attack": cfg.attack.name, "threat_model": cfg.threat_model.name, "stage": stage,
            "setting": setting_key(cfg), "config_hash": config_hash(cfg), "git_commit": commit, "mlflow.source.git.commit": commit}


@dataclass
class Prepared:
    """Validated inputs of a run, ready before any MLflow run is opened."""

    cfg: DictConfig
    device: torch.device
    cache: Path
    splits: DatasetSplits
    tracker: Tracker


def check_config(cfg: DictConfig) -> None:
    """`validate` the run-level keys, then build every component the config names once (cheap:
    constructors only), so that a bad parameter is a ConfigError naming it now, not a FAILED run."""
    validate(cfg)
    build_from_config(cfg.dataset, "dataset", Dataset)
    build_classifier(cfg.model, cfg.dataset)
    threat_model = build_threat_model(cfg.threat_model)
    build_suite(cfg.attack).plan(threat_model, build_defense(cfg.defense))   # each attack checked
    if isinstance(threat_model, BlackBox):
        build_classifier(cfg.threat_model.source.model, cfg.dataset)
    if cfg.train.scheme == "repr":
        try:
            RePrSettings.from_config(cfg.train)
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from err
    for key in ("preprocess", "adversarial_defense"):
        if cfg.train[key] is not None:
            build_defense(cfg.train[key])
    if cfg.train.adversarial is not None:
        build_attack(cfg.train.adversarial)


def prepare(cfg: DictConfig) -> Prepared:
    """Validate the config and load the data; raises ConfigError on bad input, writes nothing."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    if is_server(tracking_uri(cfg)):
        check_server(tracking_uri(cfg))        # before the data is loaded: fail in seconds
    cache = cache_dir(cfg)
    splits = load_dataset(cfg.dataset, cache)
    try:
        tracker = Tracker.from_config(cfg)
    except TrackingUnavailable:
        raise
    except Exception as err:
        raise ConfigError(f"mlflow.tracking_uri cannot be opened ({type(err).__name__}: {err}).") from err
    return Prepared(cfg, device, cache, splits, tracker)


def classifier(p: Prepared) -> TrainedClassifier:
    """The run's classifier, trained (or loaded) as `train` says."""
    return obtain_classifier(p.cfg.dataset, p.cfg.model, p.cfg.train, p.splits, p.cache, p.device)


def source_classifier(p: Prepared, source: DictConfig) -> TrainedClassifier:
    """A black-box source model: `source.model`, plain training under `source.train_seed`."""
    return obtain_classifier(p.cfg.dataset, source.model, plain_training(p.cfg.train, source.train_seed), p.splits,
                             p.cache, p.device)
