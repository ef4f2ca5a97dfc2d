"""Cost of training the cifar10_cpu preset: clean, on SPLIC-defended images, on ME-Net's n
masked-and-completed views, and Madry PGD-7 adversarial training, on the first N (shuffled)
training images of CIFAR-10 (JPEG copy). Prints, per epoch, wall time, process CPU time, the load
average and the test accuracy of the raw weights on `--monitor` test images; at the end the test
accuracy of the final (weight-averaged) model on all 10,000 test images.

    python experiments/cifar10_cpu_cost.py --settings clean --images 50000 --epochs 8
    python experiments/cifar10_cpu_cost.py --settings splic menet pgd7 --images 1000 --epochs 1

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
from torch import nn

from defense_cli.bench.machine import describe_machine
from defense_cli.config import compose
from defense_cli.data import ImageSet, load_dataset
from defense_cli.defenses import DefenseContext
from defense_cli.models import build_classifier
from defense_cli.training.adversarial import adversarial_batches
from defense_cli.training.classifiers import test_accuracy
from defense_cli.training.defended_data import defended_training_set
from defense_cli.training.hooks import TrainingHooks
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


class PrintEpoch(TrainingHooks):
    """Prints one JSON line per epoch: wall and CPU seconds since the start, load, test accuracy."""

    def __init__(self, name: str, test: ImageSet, device: torch.device) -> None:
        self.name, self.test, self.device = name, test, device
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def end_epoch(self, epoch: int, model: nn.Module) -> dict[str, float]:
        print(json.dumps({"setting": self.name, "epoch": epoch + 1, "wall_s": time.perf_counter() - self.wall,
                          "cpu_s": time.process_time() - self.cpu, "load": os.getloadavg()[0],
                          "raw_test_accuracy": test_accuracy(model, self.test, self.device),
                          "monitor_images": len(self.test)}), flush=True)
        return {}


def epoch_cost(name: str, overrides: list[str], images: int, epochs: int | None, monitor: int, cache_dir: Path,
               data_cache: Path) -> dict:
    cfg = compose(["experiment=cifar10_cpu", f"dataset.train_limit={images}", "dataset.limit=null",
                   *([f"train.epochs={epochs}"] if epochs else []), *overrides])
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
    hook = PrintEpoch(name, splits.test.head(monitor), device)
    _, wall, cpu, load = measured(lambda: train_classifier(model, train_set, cfg.train, device,
                                                           batch_transform=transform, hooks=[hook]))
    row.update(epochs=cfg.train.epochs, overrides=overrides, train_wall_s=wall, train_cpu_s=cpu, train_load=load,
               test_accuracy=test_accuracy(model, splits.test, device), test_images=len(splits.test))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's train.epochs")
    parser.add_argument("--monitor", type=int, default=1000, help="test images evaluated after each epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--override", nargs="*", default=[], help="more config overrides, e.g. model.widths=[48,96,192]")
    parser.add_argument("--data-cache", type=Path, default=Path(".defense_cli_cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine(torch.device("cpu")), f"| load average at start {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.settings:
            print(json.dumps(epoch_cost(name, [*SETTINGS[name], *args.override], args.images, args.epochs, args.monitor,
                                               Path(scratch), args.data_cache)), flush=True)


if __name__ == "__main__":
    main()
