"""Hand the CLI's extra arguments to a `@hydra.main` task, keeping multirun, --cfg and outputs.

Hydra's Compose API cannot sweep, so `defense-cli run ARGS` sets `sys.argv` to ARGS and calls a
Hydra main function, exactly as if the task were its own script. Hydra raises (rather than exits)
with HYDRA_FULL_ERROR=1, so the CLI can turn config mistakes into exit code 2.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import hydra
from omegaconf import DictConfig

from defense_cli.config import CONFIG_NAME, conf_dir


def launch(task: Callable[[DictConfig], object], args: list[str], program: str = "defense-cli") -> None:
    """Run `task` under Hydra with `args` as its command line (overrides, -m, --cfg job, ...)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main = hydra.main(config_path=str(conf_dir()), config_name=CONFIG_NAME, version_base=None)(task)
    saved = sys.argv
    sys.argv = [program, *args]
    try:
        main()
    finally:
        sys.argv = saved
