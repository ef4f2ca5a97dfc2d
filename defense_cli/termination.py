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
`CLEAN_UP_SECONDS` (a tracking server that no longer answers must not keep a stopped job alive);
that deadline is kept by a watcher thread, so it holds even while the main thread is stuck in a C
call that released the GIL (a kernel, a store or network wait). A signal the parent process set to
ignored (`nohup` ignores SIGHUP) stays ignored.
"""

from __future__ import annotations

import os
import signal
import socket
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
#: the signal watcher of the outermost `signals_raise` block (None outside every block)
_active = {"watcher": None}
#: main-thread depth of `signals_deferred` blocks, and the signal that arrived inside one
_deferral = {"depth": 0, "pending": None}


class _SignalWatcher:
    """Keeps the clean-up deadline without the main thread's help.

    Python runs a signal handler in the main thread, between bytecodes: a main thread stuck in a C
    call (a long kernel, a blocked store call) would never start a deadline from there. (A C loop
    that holds the GIL blocks this thread too; the calls that wait release it.) The C-level
    handler does write the signal's number to the wakeup file descriptor at once
    (`signal.set_wakeup_fd`); this watcher thread reads it, starts the `CLEAN_UP_SECONDS` deadline
    on the first termination signal and ends the process at once on the second.
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._deadline: threading.Timer | None = None
        self._thread = threading.Thread(target=self._watch, name="signal-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while (received := self._read.recv(1)) and received[0] != 0:
            signum = received[0]
            if signum not in TERMINATION_SIGNALS:
                continue
            if self._deadline is not None:
                os._exit(128 + signum)
            self._deadline = threading.Timer(CLEAN_UP_SECONDS, os._exit, args=(128 + signum,))
            self._deadline.daemon = True
            self._deadline.start()

    def stop(self) -> None:
        """Cancels the deadline and hands the wakeup descriptor back (the block was left)."""
        signal.set_wakeup_fd(self._previous_fd)
        self._write.setblocking(True)
        self._write.send(b"\0")
        self._thread.join()
        if self._deadline is not None:
            self._deadline.cancel()
        self._read.close()
        self._write.close()


def _raise_on_signal(signum: int, frame: object) -> None:
    if _deferral["depth"]:
        _deferral["pending"] = signum
        return
    for number in TERMINATION_SIGNALS:
        if signal.getsignal(number) is _raise_on_signal:
            signal.signal(number, _leave_to_watcher)
    raise TerminatedBySignal(signum)


def _leave_to_watcher(signum: int, frame: object) -> None:
    """A second signal: the watcher ends the process; the main thread's clean-up is not cut."""


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, termination signals raise `TerminatedBySignal`; old handlers come back after.

    Blocks nest: an inner block (a job inside the CLI's launcher) leaves the handlers and the
    clean-up deadline to the outermost one, so the launcher's own clean-up is still bounded.
    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread() or _active["watcher"] is not None:
        yield
        return
    previous = {number: signal.getsignal(number) for number in TERMINATION_SIGNALS}
    _active["watcher"] = _SignalWatcher()
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, _raise_on_signal)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _active["watcher"].stop()
        _active["watcher"] = None


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
