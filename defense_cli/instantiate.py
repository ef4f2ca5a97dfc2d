"""Build the object a config group option describes: `_target_` names the class, the other keys
(but `name`) are its constructor arguments. Used for defenses and attacks."""

from __future__ import annotations

from typing import TypeVar

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from defense_cli.errors import ConfigError

NON_ARGUMENT_KEYS = ("name",)
T = TypeVar("T")


def build_from_config(cfg: DictConfig, group: str, base: type[T]) -> T:
    """Instantiate `cfg` (an option of `group`); a bad parameter raises ConfigError naming it."""
    arguments = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                 if k not in NON_ARGUMENT_KEYS}
    if "_target_" not in arguments:
        raise ConfigError(f"{group} {cfg.get('name')!r} has no _target_ in its config file")
    try:
        built = instantiate(arguments, _convert_="all")
    except Exception as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{group}={cfg.get('name')}: {cause}") from err
        raise
    if not isinstance(built, base):
        raise ConfigError(f"{group} {cfg.get('name')!r}: {arguments['_target_']} is not a {base.__name__}")
    return built
