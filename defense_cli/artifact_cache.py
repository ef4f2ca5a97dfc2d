"""A disk cache for expensive artifacts (trained classifiers, defended training sets, fitted parts).

Entries are keyed by a hash of everything that determines them. Writes go to a temporary file
that is renamed into place, so an interrupted write never leaves a readable partial entry; reads
verify the file loads (`weights_only=True`) and carries the key it was stored under, and a corrupt
entry is deleted and reported as a miss so the caller rebuilds it.

Many processes (the jobs of a sweep, on one machine or on several sharing `paths.cache_dir`) may
need the same entry: a miss takes an OS file lock (`filelock`) on `<entry>.lock`, so one process
builds and the others wait, then load what it stored. The kernel releases the lock when its holder
dies, so a crashed builder leaves no stale lock behind; the next process builds the entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
#: dataset keys that select or locate the data, or say how to attack it, but do not change what is built from it
DATASET_KEYS_NOT_IN_KEY = ("limit", "data_dir", "download", "attack_eps")


def config_without(cfg: DictConfig, keys: tuple[str, ...]) -> dict:
    """`cfg` as a plain dict without `keys` (settings that must not enter a cache key)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in plain.items() if k not in keys}


def cache_key(parts: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a JSON-able (or OmegaConf) description."""
    plain = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
             for k, v in parts.items()}
    text = json.dumps({"format": CACHE_FORMAT, **plain}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write `payload` with torch.save to a temp file in the same folder, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_verified(path: Path, expected_key: str | None = None) -> dict[str, Any] | None:
    """The entry at `path`, or None when absent; a corrupt or mismatched entry is deleted."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, wrong format...
        log.warning("cache entry %s is corrupt (%s); rebuilding it", path, err)
        path.unlink(missing_ok=True)
        return None
    if not isinstance(payload, dict) or (expected_key and payload.get("key") != expected_key):
        log.warning("cache entry %s does not carry key %s; rebuilding it", path, expected_key)
        path.unlink(missing_ok=True)
        return None
    return payload


def entry_lock(path: Path) -> FileLock:
    """The lock that guards building the entry at `path` (a `.lock` file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(f"{path.name}.lock"))


def _acquire(lock: FileLock) -> None:
    """Take `lock`, saying so when another process holds it (it is building the same entry)."""
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.info("waiting for another process to build %s", lock.lock_file)
        lock.acquire()


def cached(path: Path, key: str, build: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Load the entry stored under `key` at `path`, or build, store and return it.

    Builds happen under the entry's lock; a process that waited for it loads the entry that the
    holder stored. Returns (payload, hit). The payload gets a "key" field.
    """
    payload = load_verified(path, key)
    if payload is not None:
        return payload, True
    lock = entry_lock(path)
    _acquire(lock)
    try:
        payload = load_verified(path, key)
        if payload is not None:
            return payload, True
        payload = {**build(), "key": key}
        save_atomic(payload, path)
        log.info("stored cache entry %s", path)
    finally:
        lock.release()
    return payload, False
