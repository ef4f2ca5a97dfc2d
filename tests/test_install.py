"""`pip install .` into a fresh venv, run from another folder: the CLI and its configs work.

The fresh venv borrows the already-installed dependencies through a .pth file (installing torch
again would cost minutes and gigabytes); the project itself is built and installed as a wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH, so the fresh venv cannot import a checkout by accident."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _fresh_venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next((root / "lib").glob("python3*/site-packages"))
    (site / "_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin"


def test_installed_package_finds_its_configs_and_runs(tmp_path):
    bin_dir = _fresh_venv(tmp_path / "venv")
    install = subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(REPO)],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([bin_dir / "python", "-c",
                            "import defense_cli, defense_cli.config as c; print(defense_cli.__file__); print(c.conf_dir())"],
                           capture_output=True, text=True, cwd=elsewhere, env=_clean_env())
    package_file, conf = where.stdout.split()
    assert str(tmp_path / "venv") in package_file and str(tmp_path / "venv") in conf
    listing = subprocess.run([bin_dir / "defense-cli", "list", "defense"], capture_output=True, text=True,
                             cwd=elsewhere, env=_clean_env())
    assert listing.returncode == 0 and "jpeg" in listing.stdout
    run = subprocess.run([bin_dir / "defense-cli", "run", "dataset.limit=16", "train.epochs=1", "attack.steps=2"],
                         capture_output=True, text=True, cwd=elsewhere, timeout=600, env=_clean_env())
    assert run.returncode == 0, run.stderr[-3000:]
    assert (elsewhere / "mlflow.db").is_file() and (elsewhere / ".defense_cli_cache" / "models").is_dir()
