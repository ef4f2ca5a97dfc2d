"""Help, version, unknown flags and the option list: what a new user reads first."""

from __future__ import annotations

import pytest

from conftest import invoke_cli, runs_in
from defense_cli.config import GROUPS, group_options


def test_version():
    from defense_cli import __version__

    result = invoke_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"defense-cli {__version__}"


def test_run_help_explains_overrides_multirun_cfg_and_gives_examples():
    text = " ".join(invoke_cli("run", "--help").stdout.split())
    for part in ("GROUP=OPTION", "KEY=VALUE", "+KEY=VALUE", "-m / --multirun", "--cfg job"):
        assert part in text
    assert text.count("defense-cli run ") >= 3


def test_an_unknown_flag_gets_one_paragraph_and_exit_2():
    result = invoke_cli("run", "--epochs", "3")
    assert result.exit_code == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: unknown option '--epochs'") and "KEY=VALUE" in line and "-m" in line


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_list_descriptions_are_whole_sentences(group):
    for option, description in group_options(group).items():
        assert description.endswith("."), f"conf/{group}/{option}.yaml: {description!r}"


@pytest.mark.parametrize("args", [["attack.eps=-1"], ["model=compressed", "model.entry=/no/such/entry.pt"]])
def test_input_errors_print_only_our_paragraph_and_write_no_run(home, monkeypatch, args):
    monkeypatch.chdir(home)
    result = invoke_cli("run", *args, f"paths.home={home}")
    assert result.exit_code == 2
    assert "Error executing job" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()][0].startswith("error: ")
    assert runs_in(home) == []


def test_results_table_fits_80_columns_in_a_pipe(capsys):
    from defense_cli.results_table import print_table, results_table

    attack = "PGD(norm=linf, eps=0.03137254901960784, steps=20, step_size=0.0031, restarts=1) + BPDA(identity)"
    print_table(results_table("defense-cli run", {"robust_accuracy": 0.5}, {"attack": attack},
                              {"classifier_at_chance": "clean accuracy 10.00% is at chance " * 3}))
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "0.03137254901960784" in "".join(lines)  # wrapped inside its cell, not cut
