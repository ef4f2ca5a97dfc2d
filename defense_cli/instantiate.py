"""Build the object a config node describes: `_target_` names the class (or factory), the other
keys but `name` are its constructor arguments; nested `_target_` nodes are built first and passed
in (a chain's steps, a training run's preprocessing defense). The one way from config to object
for models, datasets, threat models, defenses and attacks."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from defense_cli.errors import ConfigError

NON_ARGUMENT_KEYS = ("name",)
T = TypeVar("T")


def constructor_arguments(node: Any) -> Any:
    """The resolved plain config with `name` removed from every `_target_` node, nested ones too."""
    if isinstance(node, dict):
        labelled = "_target_" in node
        return {k: constructor_arguments(v) for k, v in node.items() if not (labelled and k in NON_ARGUMENT_KEYS)}
    if isinstance(node, list):
        return [constructor_arguments(v) for v in node]
    return node


def _named(group: str, option: object, message: str) -> str:
    """`eps=-1 is not allowed` -> `attack.eps=-1 is not allowed (attack=pgd)`: the full key named."""
    if re.match(r"[A-Za-z_][\w.]*=", message):
        return f"{group}.{message} ({group}={option})"
    return f"{group}={option}: {message}"


def build_from_config(cfg: DictConfig, group: str, base: type[T], **extra: Any) -> T:
    """Instantiate `cfg` (an option of `group`) with `extra` keyword arguments added; a bad
    parameter raises ConfigError naming the option."""
    arguments = constructor_arguments(OmegaConf.to_container(cfg, resolve=True))
    if "_target_" not in arguments:
        raise ConfigError(f"{group}.name={cfg.get('name')!r} has no _target_ in its config; pick a config file "
                          f"with {group}=<option> (or set {group}._target_ to a class)")
    try:
        built = instantiate(arguments, _convert_="all", **extra)
    except Exception as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, (ValueError, TypeError, ConfigError)):
            raise ConfigError(_named(group, cfg.get("name"), str(cause))) from err
        raise
    if not isinstance(built, base):
        raise ConfigError(f"{group} {cfg.get('name')!r}: {arguments['_target_']} is not a {base.__name__}")
    return built
