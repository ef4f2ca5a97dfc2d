"""What every task does before its MLflow run opens: validate the config, load the data, open the
tracker; and the classifier train-or-load shared by the tasks.

Everything that can be wrong with the user's input (config values, dataset files, defense and
attack parameters) is checked here, before the MLflow run opens; from then on a failure marks the
run FAILED.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from defense_cli.attacks import build_attack
from defense_cli.attacks.threat_models import WhiteBoxSettings
from defense_cli.config import validate
from defense_cli.data import DatasetSplits, load_dataset
from defense_cli.defenses import DefenseContext, build_defense
from defense_cli.errors import ConfigError
from defense_cli.tracking import Tracker, git_commit, home_dir
from defense_cli.training.adversarial import adversarial_configs
from defense_cli.artifact_cache import cache_key
from defense_cli.training.classifiers import TrainedClassifier, obtain_classifier


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


def classifier(p: Prepared, model_cfg: DictConfig | None = None, seed: int | None = None) -> TrainedClassifier:
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


