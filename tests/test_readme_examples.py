"""Every command of the README's Examples block runs, made small (few images, one epoch, few
steps), exits 0 and gives sane numbers (accuracies above chance where a classifier is trained)."""

from __future__ import annotations

import re
import shlex
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, run_cli, runs_in

pytestmark = pytest.mark.slow

CIFAR_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg" / "test.tar.gz"
#: appended to every example: small data and few epochs (mnist5k trains on 1,000 images; small_cnn
#: reaches about 75 % in 5 epochs, 24 % in 1)
SMALL = {"run": ["dataset.limit=24", "eval_batch_size=24", "train.epochs=5", "dataset.test_fraction=0.8",
                 "num_samples_grid=0"],
         "train": ["dataset.limit=200", "train.epochs=5", "dataset.test_fraction=0.8"],
         "compress": ["dataset.limit=100", "train.epochs=5", "dataset.test_fraction=0.8", "compress.images=64",
                      "compress.samples=2000", "compress.finetune.epochs=0", "compress.latency.repeats=1",
                      "compress.latency.warmup=0", "compress.latency.batch_sizes=[1]"]}
#: further settings an example needs to be small (keys only some configs have)
EXTRA = {"attack=pgd": ["attack.steps=2"], "attack=bpda": ["attack.steps=2", "threat_model.eot_samples=2"],
         "train=repr": ["train.epochs=3", "train.repr.s1=1", "train.repr.s2=1", "train.repr.n=1"],
         "threat_model=black_box": ["attack.steps=2"], "dataset=image_folder": ["dataset.limit=20"],
         "attack=adaptive": ["attack.eot_samples=2", "attack.attacks.pgd7.steps=2", "attack.attacks.apgd_ce.steps=3",
                             "attack.attacks.apgd_ce.restarts=1", "attack.attacks.apgd_t.steps=3"],
         "checks=full": ["checks.query.n_images=8", "checks.query.attack.steps=2", "checks.unbounded.n_images=8",
                         "checks.strength.n_images=8"]}
CHANCE = 0.1


def readme_examples() -> list[str]:
    """The run, train and compress lines of the README's Examples block (table and report read
    experiment specs and sweeps: tests/test_table*.py)."""
    text = (REPO / "README.md").read_text()
    block = text.split("Examples:\n\n```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    return [line for line in lines if shlex.split(line)[1] in SMALL]


def small_args(example: str, cifar_root: Path) -> list[str]:
    words = shlex.split(example.replace("$HOME/data/cifar10-jpeg", str(cifar_root)))
    command, args = words[1], words[2:]
    args = [a for a in args if not a.startswith("train.epochs=")]
    if "dataset=image_folder" in args:
        args = [a for a in args if not a.startswith("dataset.limit")]
    extra = [e for key, values in EXTRA.items() if key in args or (key == "attack=pgd" and command == "run"
                                                                       and not any(a.startswith("attack=") for a in args))
             for e in values]
    small = [a for a in SMALL[command] if not (a.startswith("dataset.test_fraction") and "dataset=image_folder" in args)]
    if "-m" in args:
        small = [a for a in small if not a.startswith("dataset.limit")]
    return [command, *args, *small, *extra]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    """Real CIFAR-10 JPEGs: 6 train and 2 test images per class from the shared test archive."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"{CIFAR_JPEG} is not there")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    seen: dict[str, int] = {}
    with tarfile.open(CIFAR_JPEG) as archive:
        for member in archive:
            if not member.isfile():
                continue
            label = Path(member.name).parent.name
            count = seen.get(label, 0)
            if count < 8:
                split = "train" if count < 6 else "test"
                target = root / split / label / Path(member.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
                seen[label] = count + 1
    return root


def test_the_readme_has_examples_of_each_command():
    commands = {shlex.split(e)[1] for e in readme_examples()}
    assert commands == set(SMALL)


@pytest.mark.parametrize("example", readme_examples())
def test_readme_example_runs_and_gives_sane_numbers(example, home, shared_cache, cifar_root):
    args = small_args(example, cifar_root)
    result = run_cli(*args, f"paths.home={home}", f"paths.cache_dir={shared_cache}", cwd=home, timeout=1800)
    assert result.returncode == 0, (args, result.stderr[-3000:])
    runs = [r for r in runs_in(home) if r.data.tags.get("sweep") != "parent"]
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    on_cifar_subset = "dataset=image_folder" in args  # 60 training images: no accuracy to expect
    for run in runs:
        metrics = run.data.metrics
        for name in ("clean_accuracy", "defended_clean_accuracy", "test_accuracy"):
            if name in metrics:
                assert 0 <= metrics[name] <= 1
                if not on_cifar_subset:
                    assert metrics[name] > CHANCE + 0.1, (example, name, metrics[name])
        if "robust_accuracy" in metrics:
            assert metrics["robust_accuracy"] <= metrics["defended_clean_accuracy"] + 0.1
    if args[0] == "compress":
        assert re.search(r"model\.entry=\S+\.pt", result.stdout.replace("\n", "")), result.stdout[-2000:]
