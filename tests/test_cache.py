"""The artifact cache: atomic writes, verified reads, corrupt entries rebuilt."""

from __future__ import annotations

import torch

from defense_cli.artifact_cache import cache_key, cached, load_verified, save_atomic


def test_key_depends_on_every_part_and_is_order_free():
    a = cache_key({"model": {"name": "x", "width": 32}, "train": {"lr": 0.1}})
    assert a == cache_key({"train": {"lr": 0.1}, "model": {"width": 32, "name": "x"}})
    assert a != cache_key({"model": {"name": "x", "width": 16}, "train": {"lr": 0.1}})


def test_cached_builds_once_then_loads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"weights": torch.arange(4.0)}

    path = tmp_path / "entry.pt"
    first, hit1 = cached(path, "k1", build)
    second, hit2 = cached(path, "k1", build)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert torch.equal(second["weights"], torch.arange(4.0))


def test_truncated_entry_is_detected_deleted_and_rebuilt(tmp_path):
    path = tmp_path / "entry.pt"
    save_atomic({"key": "k", "weights": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])          # a partial write
    assert load_verified(path, "k") is None and not path.exists()
    payload, hit = cached(path, "k", lambda: {"weights": torch.ones(3)})
    assert not hit and torch.equal(payload["weights"], torch.ones(3))


def test_entry_under_another_key_is_not_used(tmp_path):
    path = tmp_path / "entry.pt"
    save_atomic({"key": "old", "weights": torch.zeros(2)}, path)
    assert load_verified(path, "new") is None


def test_failed_build_leaves_no_file(tmp_path):
    path = tmp_path / "entry.pt"

    def broken():
        raise RuntimeError("interrupted")

    try:
        cached(path, "k", broken)
    except RuntimeError:
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["entry.pt.lock"]   # the lock file, no entry or temp file
