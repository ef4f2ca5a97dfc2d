"""Where the Hydra config tree lives, how to compose it outside the CLI, and what is allowed in it.

`conf/` sits at the top of a checkout; an installed wheel carries the same tree as the package
`defense_cli.conf` (see pyproject.toml). Validation runs before anything is written to MLflow or
the cache, so a bad value leaves no half-written state.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from defense_cli.errors import ConfigError

CONFIG_NAME = "config"
COMPRESS_CONFIG_NAME = "compress_config"


def _divide(numerator: float, denominator: float) -> float:
    """`${div:8,255}`: pixel-scale constants such as 8/255 written once, as the papers print them."""
    return float(numerator) / float(denominator)


if not OmegaConf.has_resolver("div"):
    OmegaConf.register_new_resolver("div", _divide)
GROUPS = ("dataset", "model", "train", "defense", "attack", "threat_model", "checks", "experiment", "compress")


def conf_dir() -> Path:
    """The config root: `conf/` of a checkout, else the copy installed inside the package."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / f"{CONFIG_NAME}.yaml").is_file():
        return checkout
    installed = Path(str(resources.files("defense_cli") / "conf"))
    if (installed / f"{CONFIG_NAME}.yaml").is_file():
        return installed
    raise FileNotFoundError(f"no config tree found at {checkout} or {installed}")


def group_options(group: str) -> dict[str, str]:
    """Options of a config group mapped to their description (the file's first comment, up to the
    first line that ends a sentence: never cut mid-sentence)."""
    folder = conf_dir() / group
    if not folder.is_dir():
        raise ConfigError(f"unknown config group '{group}'; allowed groups: {', '.join(GROUPS)}")
    return {path.stem: _first_comment(path) for path in sorted(folder.glob("*.yaml"))}


def _first_comment(path: Path) -> str:
    parts: list[str] = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("# @package") or (not parts and not text.startswith("#")):
            continue
        if not text.startswith("#"):
            break
        parts.append(text.lstrip("# ").strip())
        if parts[-1].endswith("."):
            break
    return " ".join(parts)


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = CONFIG_NAME) -> DictConfig:
    """Compose the config as `defense-cli run` would, for tests and tools (no multirun here)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose_group_option(group: str, option: str) -> DictConfig:
    """One option of a group (e.g. the `jpeg` defense) as Hydra composes it into the run config
    (its defaults list and nested options included), resolved, as a config of its own. For tests
    and tools (it starts a Hydra composition: not callable from inside a running task)."""
    options = group_options(group)
    if option not in options:
        raise ConfigError(f"{group}={option!r} is unknown; allowed: {', '.join(options)}.")
    root = compose([f"{group}={option}"], config_name=COMPRESS_CONFIG_NAME if group == "compress" else CONFIG_NAME)
    return OmegaConf.create(OmegaConf.to_container(root[group], resolve=True))


#: Root keys that say where a run is stored, whether a stored one is reused and how much is
#: printed, not what it computes; `config_hash` leaves them out.
VOLATILE_KEYS = ("paths", "mlflow", "hydra", "resume", "quiet")


def config_hash(cfg: DictConfig) -> str:
    """The identity of a run's computation: SHA-256 of the resolved config without VOLATILE_KEYS.

    Every run carries it as the MLflow tag `config_hash`, so a table (or any later command) finds
    the FINISHED run that already computed a cell, whichever command or launcher ran it.
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in VOLATILE_KEYS:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


# --- validation -----------------------------------------------------------------------------

Rule = Callable[[Any], bool]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _nonneg(value: Any) -> bool:
    return _number(value) and value >= 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _unit_interval(value: Any) -> bool:
    return _number(value) and 0 <= value <= 1


def _one_of(*allowed: Any) -> Rule:
    def rule(value: Any) -> bool:
        return value in allowed

    rule.__doc__ = "one of " + ", ".join(map(str, allowed))
    return rule


#: Keys of the run itself and of classifier training, which no component constructor receives.
#: Component parameters (dataset, model, defense, attack, threat model) are checked by their own
#: constructors (`defense_cli.parameter_checks`), built once by `tasks.prepare.check_config`.
_RULES: dict[str, tuple[Rule, str]] = {
    "seed": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "eval_batch_size": (_positive_int, "an integer >= 1"),
    "num_samples_grid": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "resume": (lambda v: isinstance(v, bool), "true or false"),
    "quiet": (lambda v: isinstance(v, bool), "true or false"),
    "train.epochs": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "train.batch_size": (_positive_int, "an integer >= 1"),
    "train.lr": (lambda v: _number(v) and v > 0, "a number > 0"),
    "train.momentum": (_unit_interval, "a number in [0, 1]"),
    "train.weight_decay": (_nonneg, "a number >= 0"),
    "train.optimizer": (_one_of("sgd", "adam"), "one of sgd, adam"),
    "train.schedule": (_one_of("cosine", "step", "constant", "onecycle"), "one of cosine, step, constant, onecycle"),
    "train.warmup_fraction": (lambda v: _number(v) and 0 <= v < 1, "a fraction in [0, 1) of the training steps"),
    "train.final_lr_fraction": (_unit_interval, "a number in [0, 1] (the last step's lr / train.lr)"),
    "train.label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.2"),
    "train.ema_decay": (lambda v: v is None or (_number(v) and 0 < v < 1), "null or a number in (0, 1), e.g. 0.99"),
    "train.translate": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                        "an integer >= 0 (pixels of random translation when train.augment)"),
    "train.precision": (_one_of("float32", "bfloat16", "auto"), "one of float32, bfloat16, auto"),
    "train.step_size": (_positive_int, "an integer >= 1"),
    "train.scheme": (_one_of("standard", "repr"), "one of standard, repr"),
    "train.repr.s1": (_positive_int, "an integer >= 1 (epochs of full-network training per cycle)"),
    "train.repr.s2": (_positive_int, "an integer >= 1 (epochs of sub-network training per cycle)"),
    "train.repr.n": (_positive_int, "an integer >= 1 (RePr cycles)"),
    "train.repr.p": (lambda v: _number(v) and 0 < v < 1, "a fraction in (0, 1), e.g. 0.3 for 30 %"),
    "train.repr.metric": (_one_of("ortho", "weight_norm", "random", "oracle"),
                          "one of ortho, weight_norm, random, oracle"),
    "train.repr.oracle_samples": (_positive_int, "an integer >= 1"),
    "checks.strength.factor": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    "checks.strength.n_images": (_positive_int, "an integer >= 1"),
    "checks.unbounded.n_images": (_positive_int, "an integer >= 1"),
    "checks.unbounded.max_accuracy": (_unit_interval, "a number in [0, 1]"),
    "search.min_clean_accuracy": (_unit_interval, "a number in [0, 1]"),
    "checks.indicators.n_images": (_positive_int, "an integer >= 1"),
    "checks.indicators.noise_draws": (_positive_int, "an integer >= 1"),
    "checks.indicators.noise_radius": (lambda v: _number(v) and v > 0, "a number > 0"),
    **{f"checks.indicators.max_{name}": (_unit_interval, "a number in [0, 1]")
       for name in ("unavailable", "unstable", "silent", "incomplete", "transfer_failure")},
    "checks.query.n_images": (_positive_int, "an integer >= 1"),
    "checks.query.max_gap": (_unit_interval, "a number in [0, 1]"),
    "checks.clean_drop_tolerance": (_unit_interval, "a number in [0, 1]"),
    "checks.chance_margin": (_unit_interval, "a number in [0, 1]"),
}


def validate(cfg: DictConfig) -> None:
    """Check every known key of the composed config; raise ConfigError naming the first bad one."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set (e.g. {missing[0]}=<value>); it has no default.")
    for key, (rule, allowed) in _RULES.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            continue
        if not rule(value):
            raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {allowed}.")
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"train.device={cfg.device!r} is not allowed: use auto, cpu, cuda or cuda:N.")
    _validate_options(cfg)


def option_names(group: str) -> list[str]:
    """The `name` values of a group's option files (several files may share one, e.g. convnet)."""
    return sorted({str(OmegaConf.load(conf_dir() / group / f"{option}.yaml").get("name"))
                   for option in group_options(group)})


def _validate_options(cfg: DictConfig) -> None:
    models = {"model.name": cfg.model.name,
              "threat_model.source.model.name": OmegaConf.select(cfg, "threat_model.source.model.name")}
    for key, name in models.items():
        if name is not None and name not in option_names("model"):
            raise ConfigError(f"{key}={name!r} is unknown; pick a model with model=<option>; allowed names: "
                              f"{', '.join(option_names('model'))}.")
    for key, group in (("preprocess", "defense"), ("adversarial", "attack"), ("adversarial_defense", "defense")):
        value = cfg.train[key]
        if value is not None and not isinstance(value, DictConfig):
            raise ConfigError(f"train.{key}={value!r} is not a {group} config: pick one with "
                              f"{group}@train.{key}=<option> (allowed: {', '.join(group_options(group))}), "
                              f"write train.{key}='${{{group}}}' for the run's own {group}, or leave it null.")


_MISSING = object()
