"""A run that dies is never left RUNNING: signals end it KILLED, SIGKILL is found by `runs --stale`.

The end-to-end cases start the real CLI in a subprocess against a real SQLite store, wait until
its run is working (RUNNING in the store), then send the signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import invoke_cli, run_cli, runs_in
from defense_cli.termination import TerminatedBySignal, signals_deferred, signals_raise
from defense_cli.tracking import Tracker

#: a training long enough (about a minute) to be interrupted while it works
LONG_TRAINING = ("train.epochs=40", "dataset.limit=200")


def _start_cli(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # as from a terminal: a test session started under nohup would pass its ignored SIGHUP on,
    # and the CLI rightly keeps an ignored SIGHUP ignored
    return subprocess.Popen([sys.executable, "-m", "defense_cli.cli", *args], cwd=home, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))


def _wait_for_running_child(home: Path, process: subprocess.Popen, timeout: float = 120.0):
    """The first RUNNING run that is not a sweep parent, once its classifier training has started."""
    for line in process.stderr:  # the progress records: the job is working, not starting up
        if "[progress] train" in line:
            break
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        running = [r for r in runs_in(home) if r.info.status == "RUNNING" and r.data.tags.get("sweep") != "parent"]
        if running:
            time.sleep(1.0)
            return running[0]
        time.sleep(0.3)
    process.kill()
    pytest.fail("no run started in time")


def _stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signalled_run_ends_killed_with_the_signal(home, signum):
    process = _start_cli(home, "run", *LONG_TRAINING, "mlflow.heartbeat_seconds=0.5",
                         f"paths.cache_dir={home / 'cache'}")
    run = _wait_for_running_child(home, process)
    code, stderr = _stop(process, signum)
    assert code == 128 + signum, stderr
    stored = {r.info.run_id: r for r in runs_in(home)}[run.info.run_id]
    assert stored.info.status == "KILLED"
    assert stored.data.tags["signal"] == signal.Signals(signum).name
    assert float(stored.data.tags["heartbeat"]) >= stored.info.start_time / 1000
    assert not list((home / "cache").rglob("*.pt")), "a classifier killed while training must not be cached"


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_marks_child_and_parent_killed(home):
    process = _start_cli(home, "run", "-m", *LONG_TRAINING, "seed=0,1", f"paths.cache_dir={home / 'cache'}")
    _wait_for_running_child(home, process)
    code, stderr = _stop(process, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr
    runs = runs_in(home)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 1, "the second job must not start after the signal"
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["signal"] == "SIGTERM"
    assert children[0].info.status == "KILLED" and children[0].data.tags["signal"] == "SIGTERM"


@pytest.mark.slow
def test_a_run_killed_inside_its_attack_suite_resumes_after_the_last_finished_attack(home):
    """Killed while APGD-CE runs, after PGD-7 finished: the same command resumes from PGD-7's
    checkpoint, says so in its tags, and leaves no checkpoint once FINISHED."""
    args = ("run", "attack=adaptive", "attack.attacks.apgd_ce.steps=400", "attack.attacks.apgd_t.steps=5",
            "attack.attacks.apgd_t.target_classes=2", "train.epochs=1", "dataset.limit=64",
            f"paths.cache_dir={home / 'cache'}")
    process = _start_cli(home, *args)
    for line in process.stderr:
        if "[progress] attack suite on 64 images: 33% (1/3 attack)" in line:
            break
    code, stderr = _stop(process, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr
    (killed,) = runs_in(home)
    assert killed.info.status == "KILLED"
    (checkpoint,) = (home / "cache" / "suite_checkpoints").rglob("*.pt")
    assert checkpoint.name == "batch0.pt"

    resumed = run_cli(*args, cwd=home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "attack suite on 64 images: start (0/2 attack)" in resumed.stderr     # PGD-7 not run again
    (finished,) = [run for run in runs_in(home) if run.info.status == "FINISHED"]
    assert finished.data.tags["resumed_attacks"] == "1"
    assert finished.data.tags["config_hash"] == killed.data.tags["config_hash"]
    assert not list((home / "cache" / "suite_checkpoints").rglob("*.pt"))


@pytest.mark.slow
def test_a_table_stopped_by_sigterm_marks_its_cell_and_its_parent_killed(home):
    spec = home / "spec.yaml"
    spec.write_text((Path(__file__).resolve().parent / "specs" / "mnist5k_two_by_two.yaml").read_text())
    process = _start_cli(home, "table", str(spec), *LONG_TRAINING, f"paths.cache_dir={home / 'cache'}")
    _wait_for_running_child(home, process)
    code, stderr = _stop(process, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr
    (parent,) = [r for r in runs_in(home) if r.data.tags.get("table") == spec.stem]
    (cell,) = [r for r in runs_in(home) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED" and parent.data.tags["signal"] == "SIGTERM"
    assert cell.info.status == "KILLED" and cell.data.tags["signal"] == "SIGTERM"


@pytest.mark.slow
def test_a_sigkilled_run_is_found_and_closed_by_runs_stale(home):
    process = _start_cli(home, "run", *LONG_TRAINING, f"paths.cache_dir={home / 'cache'}")
    run = _wait_for_running_child(home, process)
    process.kill()
    process.wait(timeout=30)
    assert {r.info.run_id: r for r in runs_in(home)}[run.info.run_id].info.status == "RUNNING"

    result = invoke_cli("runs", "--stale", f"paths.home={home}")
    assert result.exit_code == 0, result.output
    stored = {r.info.run_id: r for r in runs_in(home)}[run.info.run_id]
    assert stored.info.status == "FAILED"
    assert f"process {run.data.tags['pid']}" in stored.data.tags["stale_reason"]
    assert "marked 1 stale run(s) FAILED" in result.output


def _foreign_running_run(tracker: Tracker, heartbeat_age: float) -> str:
    """A RUNNING run that another host's process (pid 1 there) recorded, heartbeat `heartbeat_age` s ago."""
    tags = {"host": "another-node", "pid": "1", "heartbeat": f"{time.time() - heartbeat_age:.0f}"}
    return tracker.client.create_run(tracker.experiment_id, tags=tags).info.run_id


def test_runs_stale_closes_another_hosts_run_only_when_its_heartbeat_is_old(home):
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", "defense-cli")
    old, fresh = _foreign_running_run(tracker, 2000), _foreign_running_run(tracker, 5)
    result = invoke_cli("runs", "--stale", "--max-age", "600", f"paths.home={home}")
    assert result.exit_code == 0, result.output
    assert tracker.client.get_run(old).info.status == "FAILED"
    assert "no heartbeat for" in tracker.client.get_run(old).data.tags["stale_reason"]
    assert tracker.client.get_run(fresh).info.status == "RUNNING"


def test_opening_a_run_closes_dead_runs_of_this_host_but_not_live_ones(home):
    import socket

    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", "defense-cli")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    gone = tracker.client.create_run(tracker.experiment_id, tags={"host": host, "pid": dead.stdout.strip()})
    alive = tracker.client.create_run(tracker.experiment_id, tags={"host": host, "pid": str(os.getpid())})
    with tracker.run("new", {}):
        pass
    assert tracker.client.get_run(gone.info.run_id).info.status == "FAILED"
    assert tracker.client.get_run(alive.info.run_id).info.status == "RUNNING"


def test_runs_rejects_a_bad_status_naming_the_allowed_ones(home):
    result = invoke_cli("runs", "--status", "DONE", f"paths.home={home}")
    assert result.exit_code == 2
    assert "'DONE'" in result.output and "RUNNING" in result.output


def test_signals_raise_turns_sigterm_into_an_exception_with_the_exit_code():
    with pytest.raises(TerminatedBySignal) as stopped:
        with signals_raise():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert stopped.value.signal_name == "SIGTERM" and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer) and not t.finished.is_set()], \
        "the clean-up deadline must be cancelled once the block is left"


def test_a_signal_inside_a_store_write_is_raised_when_the_write_ends():
    finished = []
    with pytest.raises(TerminatedBySignal) as stopped:
        with signals_raise():
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                finished.append(True)
            finished.append("after")  # never reached: the signal is raised as the write ends
    assert finished == [True] and stopped.value.signal_name == "SIGTERM"


STUCK_IN_C = """
import ctypes, sys
from defense_cli import termination
termination.CLEAN_UP_SECONDS = 1.0
# one C call that releases the GIL and retries its wait on EINTR (glibc system() -> waitpid), as
# a kernel or a store call would: Python's signal handler cannot run until it returns
system = ctypes.CDLL(None).system
try:
    with termination.signals_raise():
        print("ready", flush=True)
        system(b"sleep 25")
except termination.TerminatedBySignal as stop:  # a signal before the call (a loaded machine): as the CLI exits
    sys.exit(stop.exit_code)
"""

HUNG_CLEAN_UP = """
import os, signal, time
from defense_cli import termination
for number in (signal.SIGINT, signal.SIGHUP):  # a test runner under nohup or in the background ignores them
    signal.signal(number, signal.SIG_DFL)
termination.CLEAN_UP_SECONDS = 1.0
with termination.signals_raise():  # the launcher's block
    try:
        with termination.signals_raise():  # the job's block, nested
            print("ready", flush=True)
            time.sleep(60)
    except termination.TerminatedBySignal:
        time.sleep(60)  # a clean-up that never ends (a tracking server that stopped answering)
"""


def _exit_after_signal(script: str, signum: int = signal.SIGTERM) -> tuple[int, float]:
    """(exit code, seconds from the signal to the exit) of `script` signalled once it prints "ready"."""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(timeout=20)
    finally:
        process.kill()
    return process.returncode, time.monotonic() - sent


def test_the_clean_up_deadline_holds_while_the_main_thread_is_stuck_in_c_code():
    code, seconds = _exit_after_signal(STUCK_IN_C)
    assert code == 128 + signal.SIGTERM and seconds < 10


def test_a_nested_block_leaves_the_deadline_to_the_outer_clean_up():
    code, seconds = _exit_after_signal(HUNG_CLEAN_UP, signal.SIGHUP)
    assert code == 128 + signal.SIGHUP and seconds < 10


def test_a_second_signal_ends_a_hung_clean_up_at_once():
    process = subprocess.Popen([sys.executable, "-c", HUNG_CLEAN_UP.replace("1.0", "600.0")], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert process.poll() is None, "the first signal starts the clean-up, it does not end the process"
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT


SAVE_LOOP = """
import sys, torch
from pathlib import Path
from defense_cli.artifact_cache import save_atomic
from defense_cli.termination import TerminatedBySignal, signals_deferred, signals_raise
path = Path(sys.argv[1])
try:
    with signals_raise():
        for i in range(100000):
            save_atomic({"key": "k", "weights": torch.full((4_000_000,), float(i))}, path)
            print(i, flush=True)
except TerminatedBySignal as stopped:
    sys.exit(stopped.exit_code)
"""


@pytest.mark.slow
def test_a_cache_write_stopped_by_sigterm_leaves_no_partial_entry(tmp_path):
    entry = tmp_path / "entry.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(entry)], stdout=subprocess.PIPE, text=True, env=env)
    for _ in range(3):  # a few complete writes first, then the signal lands in the middle of one
        process.stdout.readline()
    time.sleep(0.05)
    code, _ = _stop(process, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert [p.name for p in tmp_path.iterdir()] == ["entry.pt"], "no temporary file may be left behind"
    import torch

    stored = torch.load(entry, weights_only=True)
    assert stored["weights"].numel() == 4_000_000 and stored["weights"].unique().numel() == 1
