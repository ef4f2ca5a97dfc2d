"""The software and hardware a run executes on, recorded with every MLflow run.

Computed once per process (a sweep's jobs in one process share it): package versions, the
accelerator or CPU, the git commit and whether the checkout had uncommitted changes, and the full
list of installed distributions (`pip freeze` form) for `environment.txt`.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: distributions whose versions become `env.<name>` tags
PACKAGES = ("torch", "torchvision", "foolbox", "numpy", "hydra-core", "mlflow")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def git_commit() -> str:
    """The commit of the checkout this package runs from, or 'unknown' (an installed wheel)."""
    return _git("rev-parse", "HEAD") or "unknown"


@functools.cache
def git_dirty() -> str:
    """'true' when tracked files of the checkout differ from its commit, 'false', or 'unknown'."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return "unknown" if status is None else str(bool(status)).lower()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def environment_tags() -> dict[str, str]:
    """`env.*` tags: python and package versions, CUDA and device (or CPU model and threads), git."""
    import torch

    tags = {"env.python": platform.python_version(), **{f"env.{name}": _version(name) for name in PACKAGES},
            "env.cuda": torch.version.cuda or "none", "env.cpu": cpu_model(),
            "env.cpu_threads": str(torch.get_num_threads()), "env.platform": platform.platform(),
            "git_commit": git_commit(), "git_dirty": git_dirty()}
    tags["env.device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return tags


@functools.cache
def installed_distributions() -> str:
    """Every installed distribution as `name==version`, one a line, sorted (what `pip freeze` lists)."""
    names = {(dist.metadata["Name"] or "").strip(): dist.version for dist in metadata.distributions()}
    lines = sorted(f"{name}=={version}" for name, version in names.items() if name)
    return f"# python {sys.version.split()[0]} ({sys.executable})\n" + "\n".join(lines) + "\n"


def process_tags() -> dict[str, str]:
    """Who runs this: host name, process id and the process's start time (to tell a reused pid)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "process_start": process_start(os.getpid()) or ""}


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), or None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` on this host still runs and is the one that started at `start`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start and Path("/proc").is_dir():
        return process_start(pid) == start
    return True
