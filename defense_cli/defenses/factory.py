"""Build a defense from its config: `_target_` names the class, the other keys are its arguments."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from defense_cli.defenses.base import Defense
from defense_cli.errors import ConfigError

NON_ARGUMENT_KEYS = ("name",)


def build_defense(cfg: DictConfig) -> Defense:
    """Instantiate the defense (call `prepare` before use); a bad parameter raises ConfigError."""
    arguments = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                 if k not in NON_ARGUMENT_KEYS}
    if "_target_" not in arguments:
        raise ConfigError(f"defense {cfg.get('name')!r} has no _target_ in its config file")
    try:
        defense = instantiate(arguments, _convert_="all")
    except Exception as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"defense={cfg.get('name')}: {cause}") from err
        raise
    if not isinstance(defense, Defense):
        raise ConfigError(f"defense {cfg.get('name')!r}: {arguments['_target_']} is not a Defense")
    return defense
