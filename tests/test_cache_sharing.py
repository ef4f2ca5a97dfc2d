"""The artifact cache shared by many processes: one builds under the entry's file lock, the others
wait and load; a builder killed while holding the lock does not block the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from filelock import Timeout

from conftest import REPO, run_cli, runs_in
from defense_cli.artifact_cache import cached, entry_lock

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from defense_cli.artifact_cache import entry_lock
    lock = entry_lock(Path(sys.argv[1]))
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def _holder(path) -> subprocess.Popen:
    """A subprocess that takes the lock of the entry at `path` and sleeps while holding it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_builder_killed_while_holding_the_lock_does_not_block_the_next(tmp_path):
    path = tmp_path / "entry.pt"
    holder = _holder(path)
    try:
        with pytest.raises(Timeout):
            entry_lock(path).acquire(timeout=0.5)      # held by the other process
    finally:
        holder.send_signal(signal.SIGKILL)             # a crash: no cleanup code runs
        holder.wait(timeout=30)
    assert (tmp_path / "entry.pt.lock").exists()       # the lock file stays behind...
    payload, hit = cached(path, "k", lambda: {"weights": torch.ones(2)})   # ...but no longer blocks
    assert not hit and torch.equal(payload["weights"], torch.ones(2))


def test_a_process_that_waited_loads_what_the_holder_stored(tmp_path):
    path = tmp_path / "entry.pt"
    lock = entry_lock(path)
    lock.acquire()
    script = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from defense_cli.artifact_cache import cached
        payload, hit = cached(Path({str(path)!r}), "k", lambda: {{"weights": torch.zeros(3)}})
        print(hit, payload["weights"].tolist())
    """)
    waiter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=3)                     # it waits for the lock...
        from defense_cli.artifact_cache import save_atomic

        save_atomic({"key": "k", "weights": torch.arange(3.0)}, path)
    finally:
        lock.release()
    out, err = waiter.communicate(timeout=120)
    assert out.split() == ["True", "[0.0,", "1.0,", "2.0]"], err  # ...then loads, not builds


@pytest.mark.slow
def test_two_parallel_jobs_train_the_shared_classifier_once(home):
    cache = home / "cache"
    result = run_cli("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "attack.eps=0.02,0.05",
                     "dataset.limit=48", "train.epochs=1", "eval_batch_size=24", "attack.steps=2",
                     f"paths.home={home}", f"paths.cache_dir={cache}", f"hydra.sweep.dir={home / 'sweep'}",
                     cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = "".join(p.read_text() for p in (home / "sweep").glob("*/*.log"))
    assert logs.count("training small_cnn on mnist5k") == 1
    assert logs.count("stored cache entry") == 1
    assert len(list((cache / "models").glob("*.pt"))) == 1
    children = [r for r in runs_in(home) if r.data.tags.get("sweep") != "parent"]
    assert sorted(r.data.tags["classifier_cache_hit"] for r in children) == ["False", "True"]
