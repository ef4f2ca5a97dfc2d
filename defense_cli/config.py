"""Where the Hydra config tree lives, how to compose it outside the CLI, and what is allowed in it.

`conf/` sits at the top of a checkout; an installed wheel carries the same tree as the package
`defense_cli.conf` (see pyproject.toml). Validation runs before anything is written to MLflow or
the cache, so a bad value leaves no half-written state.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from defense_cli.errors import ConfigError

CONFIG_NAME = "config"
GROUPS = ("dataset", "model", "train", "defense", "attack", "threat_model", "experiment", "compress")


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
    """Options of a config group mapped to their one-line description (the file's first comment)."""
    folder = conf_dir() / group
    if not folder.is_dir():
        raise ConfigError(f"unknown config group '{group}'; allowed groups: {', '.join(GROUPS)}")
    return {path.stem: _first_comment(path) for path in sorted(folder.glob("*.yaml"))}


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("#") and not text.startswith("# @package"):
            return text.lstrip("# ").strip()
    return ""


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = CONFIG_NAME) -> DictConfig:
    """Compose the config as `defense-cli run` would, for tests and tools (no multirun here)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose_group_option(group: str, option: str) -> DictConfig:
    """The config node of one option of a group (e.g. the `jpeg` defense), read from its file."""
    options = group_options(group)
    if option not in options:
        raise ConfigError(f"{group}={option!r} is unknown; allowed: {', '.join(options)}.")
    return OmegaConf.load(conf_dir() / group / f"{option}.yaml")


# --- validation -----------------------------------------------------------------------------

Rule = Callable[[Any], bool]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _nonneg(value: Any) -> bool:
    return _number(value) and value >= 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _optional_positive_int(value: Any) -> bool:
    return value is None or _positive_int(value)


def _unit_interval(value: Any) -> bool:
    return _number(value) and 0 <= value <= 1


def _one_of(*allowed: Any) -> Rule:
    def rule(value: Any) -> bool:
        return value in allowed

    rule.__doc__ = "one of " + ", ".join(map(str, allowed))
    return rule


_RULES: dict[str, tuple[Rule, str]] = {
    "seed": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "eval_batch_size": (_positive_int, "an integer >= 1"),
    "num_samples_grid": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "dataset.limit": (_optional_positive_int, "null or an integer >= 1"),
    "dataset.test_fraction": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "dataset.train_limit": (_optional_positive_int, "null or an integer >= 1"),
    "train.epochs": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "train.batch_size": (_positive_int, "an integer >= 1"),
    "train.lr": (lambda v: _number(v) and v > 0, "a number > 0"),
    "train.momentum": (_unit_interval, "a number in [0, 1]"),
    "train.weight_decay": (_nonneg, "a number >= 0"),
    "train.optimizer": (_one_of("sgd", "adam"), "one of sgd, adam"),
    "train.schedule": (_one_of("cosine", "step", "constant"), "one of cosine, step, constant"),
    "train.step_size": (_positive_int, "an integer >= 1"),
    "train.scheme": (_one_of("standard", "repr"), "one of standard, repr"),
    "train.repr.s1": (_positive_int, "an integer >= 1 (epochs of full-network training per cycle)"),
    "train.repr.s2": (_positive_int, "an integer >= 1 (epochs of sub-network training per cycle)"),
    "train.repr.n": (_positive_int, "an integer >= 1 (RePr cycles)"),
    "train.repr.p": (lambda v: _number(v) and 0 < v < 1, "a fraction in (0, 1), e.g. 0.3 for 30 %"),
    "train.repr.metric": (_one_of("ortho", "weight_norm", "random", "oracle"),
                          "one of ortho, weight_norm, random, oracle"),
    "train.repr.oracle_samples": (_positive_int, "an integer >= 1"),
    "attack.eps": (lambda v: v is None or _nonneg(v),
                   "a number >= 0 (pixel scale, e.g. 0.0313 for 8/255), or null (unbounded) for "
                   "minimisation and decision-based attacks"),
    "attack.steps": (_positive_int, "an integer >= 1"),
    "attack.step_size": (lambda v: _number(v) and v > 0, "a number > 0 (pixel scale)"),
    "attack.restarts": (_positive_int, "an integer >= 1"),
    "attack.norm": (_one_of("linf", "l2"), "one of linf, l2"),
    "threat_model.bpda": (_one_of("identity", "surrogate"), "one of identity, surrogate"),
    "threat_model.eot_samples": (_positive_int, "an integer >= 1"),
    "threat_model.n_draws": (_positive_int, "an integer >= 1"),
    "checks.strength.factor": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    "checks.strength.n_images": (_positive_int, "an integer >= 1"),
    "checks.unbounded.n_images": (_positive_int, "an integer >= 1"),
    "checks.unbounded.max_accuracy": (_unit_interval, "a number in [0, 1]"),
    "defense.quality": (lambda v: isinstance(v, int) and 1 <= v <= 100, "an integer in 1..100"),
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


def _validate_options(cfg: DictConfig) -> None:
    from defense_cli.models import list_architectures

    models = {"model.name": cfg.model.name,
              "threat_model.source.model.name": OmegaConf.select(cfg, "threat_model.source.model.name")}
    for key, name in models.items():
        if name is not None and name not in list_architectures():
            raise ConfigError(f"{key}={name!r} is unknown; allowed: {', '.join(list_architectures())}.")
    if cfg.train.get("scheme", "standard") == "repr":
        from defense_cli.training.repr import RePrSettings

        try:
            RePrSettings.from_config(cfg.train)
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from err
    allowed = group_options("defense")
    for key in ("preprocess", "adversarial_defense"):
        value = cfg.train.get(key, "none")
        if value not in allowed:
            raise ConfigError(f"train.{key}={value!r} is not a defense; allowed: {', '.join(allowed)}.")
    adversarial = cfg.train.get("adversarial", "none")
    attacks = group_options("attack")
    if adversarial != "none" and adversarial not in attacks:
        raise ConfigError(f"train.adversarial={adversarial!r} is not an attack; allowed: none, "
                          f"{', '.join(a for a in attacks if a != 'none')}.")


_MISSING = object()
