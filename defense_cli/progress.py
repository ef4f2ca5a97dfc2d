"""Progress of long work on stderr, one way for every stage (training, defending a training set,
attacking and defending, fitting, compressing).

On a terminal: a tqdm bar (done / total, rate, ETA, the stage's current figures such as the loss).
Otherwise (CI, SLURM, nohup, a pipe): one line when the stage starts, one per `LOG_EVERY` of it, and
one when it ends, so that a log file shows where a job is:

    [progress] train small_cnn epoch 1/8: 25% (16/63 batch) 4.1 s, ETA 12.3 s, loss=0.412
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: share of a stage between two log lines when stderr is not a terminal
LOG_EVERY = 0.25


class LogProgress:
    """A tqdm-like wrapper that writes a line per `every` of `total` (and at start and end) to stderr."""

    def __init__(self, iterable: Iterable[T], total: int, desc: str, unit: str, every: float = LOG_EVERY) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, max(int(total), 0), desc, unit
        self.every = every
        self.done = 0
        self.postfix = ""
        self.start = time.perf_counter()

    def set_postfix(self, **figures: object) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in figures.items())

    def _line(self, what: str) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done and self.total else float("nan")
        timing = f"{elapsed:.1f} s" + (f", ETA {eta:.1f} s" if self.done < self.total and eta == eta else "")
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"[progress] {self.desc}: {what} ({self.done}/{self.total} {self.unit}) {timing}{tail}",
              file=sys.stderr, flush=True)

    def __iter__(self) -> Iterator[T]:
        self._line("start")
        step = max(1, round(self.total * self.every))
        for item in self.iterable:
            yield item
            self.done += 1
            if self.done < self.total and self.done % step == 0:
                self._line(f"{100 * self.done // self.total}%")
        self._line("done")


def progress(iterable: Iterable[T], total: int, desc: str, unit: str = "batch"):
    """`iterable` with progress on stderr: a tqdm bar on a terminal, log lines otherwise. Both have
    `set_postfix(**figures)`."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
    return LogProgress(iterable, total, desc, unit)
