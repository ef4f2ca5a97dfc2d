"""Bad input: one paragraph naming the key and what is allowed, exit code 2, nothing written."""

from __future__ import annotations

import pytest

from conftest import invoke_cli, runs_in

CASES = [
    (["defense=foo"], ["defense/foo", "jpeg", "none"]),
    (["attack.foo=1"], ["attack.foo", "eps", "steps"]),
    (["attack.eps=-0.5"], ["attack.eps", ">= 0"]),
    (["attack.steps=0"], ["attack.steps", ">= 1"]),
    (["dataset=image_folder", "dataset.root=/does/not/exist"], ["dataset.root", "train/"]),
    (["dataset=image_folder"], ["dataset.root"]),
    (["dataset=cifar10", "dataset.data_dir=NODATA"], ["dataset=cifar10", "internet"]),
    (["defense=jpeg", "defense.quality=101"], ["quality", "1..100"]),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(home, args, expected, monkeypatch):
    monkeypatch.chdir(home)
    args = [a.replace("NODATA", str(home / "nodata")) for a in args]
    cache = home / "cache"
    result = invoke_cli("run", *args, f"paths.home={home}", f"paths.cache_dir={cache}")
    assert result.exit_code == 2, (result.stdout[-2000:], result.stderr[-2000:])
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for word in expected:
        assert word in error_lines[0]
    assert runs_in(home) == []
    assert not (cache / "models").exists()


def test_unknown_group_in_list_exits_2():
    result = invoke_cli("list", "nonsense")
    assert result.exit_code == 2 and "allowed groups" in result.stderr
