"""Checkpoints of an attack suite between its attacks, so that a long evaluation killed in the
middle of a batch resumes after the batch's last finished attack, with the result an uninterrupted
run gives.

After each attack of a batch the suite's outcome so far, the random generator's state and the
attack seconds spent are written atomically (`artifact_cache.save_atomic`) to
`<folder>/batch<i>.pt`, under a key made of the run's config hash, the batch index, the suite's
attack names, a fingerprint of the batch's images and labels, the device type (a generator's
state belongs to its device) and a fingerprint of this package's source (a checkpoint written
before a change to the code is not resumed by the changed code). A run with the same config finds
the checkpoint, restores the outcome and the generator, and runs only the attacks after it; the
generator's state makes the rest of the run draw what the uninterrupted run would have drawn. A
corrupt file or one with another key is deleted and its batch starts from its first attack
(`artifact_cache.load_verified`). The run deletes the folder once its results are logged.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from defense_cli.artifact_cache import cache_key, load_verified, save_atomic


@dataclass(frozen=True)
class Resumed:
    """What a batch's checkpoint restores: the attacks done, the outcome's fields, the generator's
    state (None without a generator) and the attack seconds spent on them."""

    done: int
    outcome: dict[str, Any]
    generator_state: torch.Tensor | None
    seconds: float


@dataclass(frozen=True)
class BatchCheckpoint:
    """The checkpoint file of one batch and the key its content must carry."""

    path: Path
    key: str

    def load(self) -> Resumed | None:
        payload = load_verified(self.path, self.key)
        if payload is None:
            return None
        return Resumed(int(payload["done"]), payload["outcome"], payload["generator_state"], float(payload["seconds"]))

    def save(self, done: int, outcome: object, generator: torch.Generator | None, seconds: float) -> None:
        """Store the outcome after `done` attacks (a dataclass of tensors, lists and numbers)."""
        fields = {name: _to_cpu(value) for name, value in vars(outcome).items()}
        state = None if generator is None else generator.get_state()
        save_atomic({"key": self.key, "done": done, "outcome": fields, "generator_state": state,
                     "seconds": seconds}, self.path)


@dataclass(frozen=True)
class SuiteCheckpoints:
    """The checkpoints of one run: a folder per config hash under the cache."""

    folder: Path
    run_key: str

    def for_batch(self, index: int, attack_names: list[str], images: torch.Tensor,
                  labels: torch.Tensor) -> BatchCheckpoint:
        fingerprint = hashlib.sha256(images.detach().cpu().numpy().tobytes()
                                     + labels.detach().cpu().numpy().tobytes()).hexdigest()
        key = cache_key({"run": self.run_key, "batch": index, "attacks": attack_names, "data": fingerprint,
                         "device": images.device.type, "code": code_fingerprint()})
        return BatchCheckpoint(self.folder / f"batch{index}.pt", key)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 of this package's Python sources (their paths and contents)."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def restored(fields: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A checkpoint's outcome fields with every tensor on `device`."""
    return {name: _to(value, device) for name, value in fields.items()}


def _to_cpu(value: Any) -> Any:
    return _to(value, torch.device("cpu"))


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    if isinstance(value, dict):
        return {key: _to(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_to(item, device) for item in value]
    return value

