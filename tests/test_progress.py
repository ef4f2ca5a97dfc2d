"""Progress on stderr: log lines per stage and per quarter of it when stderr is not a terminal."""

from __future__ import annotations

import re

import pytest

from conftest import run_cli
from defense_cli.progress import LogProgress, progress


def test_log_lines_at_start_each_quarter_and_end(capsys):
    bar = progress(range(8), 8, "stage", "item")
    assert isinstance(bar, LogProgress)  # pytest's captured stderr is not a terminal
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.2f}")
    lines = capsys.readouterr().err.splitlines()
    assert [re.match(r"\[progress\] stage: (\S+) \((\d+)/8 item\)", line).groups() for line in lines] == [
        ("start", "0"), ("25%", "2"), ("50%", "4"), ("75%", "6"), ("done", "8")]
    assert "ETA" in lines[1] and lines[3].endswith("loss=0.17") and "ETA" not in lines[-1]


@pytest.mark.slow
def test_training_writes_progress_records_to_a_captured_stderr(home):
    result = run_cli("train", "train.epochs=2", "dataset.limit=50", f"paths.home={home}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [line for line in result.stderr.splitlines() if line.startswith("[progress]")]
    for epoch in (1, 2):
        stage = [r for r in records if f"train small_cnn epoch {epoch}/2:" in r]
        assert stage[0].split(": ")[1].startswith("start") and stage[-1].split(": ")[1].startswith("done (63/63 batch)")
        assert any("50% (32/63 batch)" in r and "ETA" in r and "loss=" in r and "accuracy=" in r for r in stage)
