"""Termination signals as an exception, so a run that is stopped can still close its records.

SIGTERM (what `kill`, `timeout`, SLURM preemption and Ray send), SIGHUP (a closed terminal) and
SIGINT (Ctrl-C) would otherwise end the process without unwinding the stack, or unwind it with a
bare `KeyboardInterrupt` that names no signal. While `signals_raise()` is active, each of them
raises `TerminatedBySignal` in the main thread instead: `finally` blocks and `except BaseException`
handlers run (an MLflow run is marked KILLED, a half-written cache file is deleted) and the process
can exit with the shell's code for a signal death, 128 + the signal number. Inside
`signals_deferred()` (a write to the tracking store) the exception waits until the block ends, so
no store transaction is cut in half and left holding its lock. A second signal during the clean-up
ends the process at once with the same code, and so does a clean-up that takes longer than
`CLEAN_UP_SECONDS` (a tracking server that no longer answers must not keep a stopped job alive). A signal the parent process set to
ignored (`nohup` ignores SIGHUP) stays ignored.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

#: the signals that stop a run and are turned into `TerminatedBySignal`
TERMINATION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class TerminatedBySignal(KeyboardInterrupt):
    """Raised in the main thread when a termination signal arrives.

    A subclass of KeyboardInterrupt, so code that already treats Ctrl-C as "stopped by the user"
    (not as a failure) treats SIGTERM and SIGHUP the same way.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"terminated by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        """The exit status a shell reports for a process that this signal ended: 128 + signum."""
        return 128 + self.signum


#: the clean-up after a signal may take this long before the process exits anyway
CLEAN_UP_SECONDS = 30.0
#: clean-up deadlines started by a signal; `signals_raise` cancels them when its block is left
_watchdogs: list[threading.Timer] = []
#: main-thread depth of `signals_deferred` blocks, and the signal that arrived inside one
_deferral = {"depth": 0, "pending": None}


def _raise_on_signal(signum: int, frame: object) -> None:
    if _deferral["depth"]:
        _deferral["pending"] = signum
        return
    for number in TERMINATION_SIGNALS:
        if signal.getsignal(number) is _raise_on_signal:
            signal.signal(number, _exit_at_once)
    watchdog = threading.Timer(CLEAN_UP_SECONDS, os._exit, args=(128 + signum,))
    watchdog.daemon = True
    watchdog.start()
    _watchdogs.append(watchdog)
    raise TerminatedBySignal(signum)


def _exit_at_once(signum: int, frame: object) -> None:
    os._exit(128 + signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, termination signals raise `TerminatedBySignal`; old handlers come back after.

    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in TERMINATION_SIGNALS}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, _raise_on_signal)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        while _watchdogs:
            _watchdogs.pop().cancel()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """A termination signal that arrives in the block is raised when the block ends (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferral["depth"] += 1
    try:
        yield
    finally:
        _deferral["depth"] -= 1
        pending = _deferral["pending"]
        if not _deferral["depth"] and pending is not None:
            _deferral["pending"] = None
            _raise_on_signal(pending, None)
