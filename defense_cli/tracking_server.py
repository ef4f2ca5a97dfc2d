"""`defense-cli server`: an MLflow tracking server that the jobs of a sweep, on this machine or on
the nodes of a cluster, write to over HTTP.

The server runs as a child process in its own process group; SIGTERM, SIGHUP or Ctrl-C of this
process stops the whole group (the `mlflow server` command and its web workers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

#: hosts that only this machine can reach
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: MLflow's background job executor (GenAI evaluation jobs, not used here) stays off unless asked for
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def default_artifacts(backend_store_uri: str) -> str:
    """`mlartifacts/` beside a SQLite backend file, else the working directory's."""
    base = Path(backend_store_uri.removeprefix("sqlite:///")).parent if backend_store_uri.startswith(
        "sqlite:///") else Path.cwd()
    return str((base / "mlartifacts").resolve())


def server_command(backend_store_uri: str, artifacts: str, host: str, port: int, workers: int) -> list[str]:
    """The `mlflow server` command line: runs in `backend_store_uri`, artifacts proxied to `artifacts`."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--serve-artifacts", "--artifacts-destination", artifacts, "--host", host, "--port", str(port),
            "--workers", str(workers), *([] if host in LOOPBACK else ["--allowed-hosts", "*"])]


def client_uri(host: str, port: int) -> str:
    """The MLFLOW_TRACKING_URI clients use: a wildcard bind address is reached by this machine's name."""
    name = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    return f"http://{name}:{port}"


def serve(command: list[str], grace_s: float = 15.0) -> int:
    """Run `command` in its own process group until it exits; SIGTERM, SIGHUP and SIGINT (Ctrl-C) of
    this process are passed to the group as SIGTERM. Returns the child's exit code, or 128 + the
    signal that stopped it."""
    env = {**SERVER_ENV, **os.environ}
    child = subprocess.Popen(command, start_new_session=True, env=env)
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        _signal_group(child.pid, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, forward)
    try:
        code = child.wait(timeout=None)
    finally:
        if received:
            _wait_or_kill(child, grace_s)
    return 128 + received[0] if received else code


def _wait_or_kill(child: subprocess.Popen, grace_s: float) -> None:
    """Give the group `grace_s` to stop after SIGTERM, then SIGKILL what is left of it."""
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(child.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # the group has already gone
        pass
