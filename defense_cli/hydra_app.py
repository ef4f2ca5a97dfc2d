"""Hand the CLI's extra arguments to a `@hydra.main` task, keeping multirun, --cfg and outputs.

Hydra's Compose API cannot sweep, so `defense-cli run ARGS` sets `sys.argv` to ARGS and calls a
Hydra main function, exactly as if the task were its own script. Hydra raises (rather than exits)
with HYDRA_FULL_ERROR=1, so the CLI can turn config mistakes into exit code 2.

While the task runs, SIGINT, SIGTERM and SIGHUP raise `TerminatedBySignal`: the open MLflow run
closes KILLED on its way out, and what is still open after that (a sweep's parent run, whose jobs
Hydra's launcher stops running) is marked KILLED here before the exception reaches the CLI. A
sweep that ends with an error instead (a failed job, a launcher that gave up on a killed worker)
marks its parent run FAILED.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Callable, Iterator

import hydra
from omegaconf import DictConfig

from defense_cli.config import CONFIG_NAME, conf_dir
from defense_cli.termination import TerminatedBySignal, signals_raise
from defense_cli.tracking import close_open_runs


def launch(task: Callable[[DictConfig], object], args: list[str], program: str = "defense-cli") -> None:
    """Run `task` under Hydra with `args` as its command line (overrides, -m, --cfg job, ...)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main = hydra.main(config_path=str(conf_dir()), config_name=CONFIG_NAME, version_base=None)(task)
    saved = sys.argv
    sys.argv = [program, *args]
    try:
        with signals_raise(), _without_job_error_line():
            try:
                main()
            except TerminatedBySignal as stopped:  # inside the block: the clean-up deadline still holds
                close_open_runs("KILLED", stopped.signal_name)
                raise
            except BaseException:  # a job failed (basic launcher) or a launcher gave up (Ray, submitit)
                close_open_runs("FAILED")
                raise
    finally:
        sys.argv = saved


#: what Hydra writes to stderr before re-raising a job's exception; the CLI prints its own paragraph
HYDRA_JOB_ERROR_LINE = "Error executing job with overrides:"


class _DropLine(io.TextIOBase):
    """stderr less the lines that start with HYDRA_JOB_ERROR_LINE."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if not text.startswith(HYDRA_JOB_ERROR_LINE):
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


@contextlib.contextmanager
def _without_job_error_line() -> Iterator[None]:
    saved = sys.stderr
    sys.stderr = _DropLine(saved)
    try:
        yield
    finally:
        sys.stderr = saved
