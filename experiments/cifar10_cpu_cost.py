"""Cost of one training epoch of the cifar10_cpu preset: clean, on SPLIC-defended images, on ME-Net's
n masked-and-completed views, and Madry PGD-7 adversarial training, on the first N (shuffled)
training images of CIFAR-10 (JPEG copy). Prints wall time, process CPU time and the load average.

    python experiments/cifar10_cpu_cost.py --images 1000 [--threads 2]

The defended sets are computed fresh here (no cache) so that their cost is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from defense_cli.bench.machine import describe_machine
from defense_cli.config import compose
from defense_cli.data import load_dataset
from defense_cli.defenses import DefenseContext
from defense_cli.models import build_classifier
from defense_cli.training.adversarial import adversarial_batches
from defense_cli.training.defended_data import defended_training_set
from defense_cli.training.trainer import train_classifier

SETTINGS = {
    "clean": [],
    "splic": ["defense@train.preprocess=splic"],
    "menet": ["defense@train.preprocess=menet"],
    "pgd7": ["attack@train.adversarial=pgd7"],
}


def measured(fn):
    """(result, wall seconds, process CPU seconds, 1-minute load average at the end)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu, os.getloadavg()[0]


def epoch_cost(name: str, overrides: list[str], images: int, cache_dir: Path, data_cache: Path) -> dict:
    cfg = compose(["experiment=cifar10_cpu", f"dataset.train_limit={images}", "train.epochs=1", *overrides])
    device = torch.device("cpu")
    splits = load_dataset(cfg.dataset, data_cache)
    train_set, row = splits.train, {"setting": name, "train_images": images}
    if cfg.train.preprocess is not None:
        train_set, wall, cpu, load = measured(lambda: defended_training_set(
            splits.train, cfg.train.preprocess, cfg.dataset, cache_dir, device, cfg.train.seed))
        row.update(defend_wall_s=wall, defend_cpu_s=cpu, defend_load=load, trained_views=len(train_set))
    torch.manual_seed(cfg.train.seed)
    model = build_classifier(cfg.model, cfg.dataset)
    transform = adversarial_batches(cfg.train, DefenseContext(classifier=model, train_set=splits.train,
                                                              cache_dir=cache_dir, device=device, seed=cfg.train.seed))
    _, wall, cpu, load = measured(lambda: train_classifier(model, train_set, cfg.train, device,
                                                           batch_transform=transform))
    row.update(epoch_wall_s=wall, epoch_cpu_s=cpu, epoch_load=load)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--data-cache", type=Path, default=Path(".defense_cli_cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine(torch.device("cpu")), f"| load average at start {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.settings:
            print(json.dumps(epoch_cost(name, SETTINGS[name], args.images, Path(scratch), args.data_cache)), flush=True)


if __name__ == "__main__":
    main()
