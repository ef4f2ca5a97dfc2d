"""Supervised training of a classifier on an ImageSet, deterministic under `train.seed`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from defense_cli.data import ImageSet
from defense_cli.errors import TrainingDiverged
from defense_cli.progress import progress
from defense_cli.training.augment import random_crop_flip
from defense_cli.training.averaging import WeightAverage
from defense_cli.training.hooks import TrainingHooks
from defense_cli.training.repr import scheme_hooks


@dataclass
class TrainingLog:
    """Loss and accuracy on the training set, per epoch, and the hooks' per-epoch metrics."""

    losses: list[float]
    accuracies: list[float]
    extra: dict[str, list[float]] = field(default_factory=dict)

    def per_epoch(self) -> dict[str, list[float]]:
        """Every per-epoch series by name: train_loss, train_accuracy and the extra ones."""
        return {"train_loss": self.losses, "train_accuracy": self.accuracies, **self.extra}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` on `device`: None for float32; `auto` is bfloat16 where
    the device computes it natively (a CUDA GPU with bfloat16, a CPU with AVX-512-BF16 or AMX) and
    float32 elsewhere: on an AVX2-only CPU bfloat16 is emulated and trains about 10x slower."""
    if precision == "auto":
        native = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                  else torch.ops.mkldnn._is_mkldnn_bf16_supported())
        precision = "bfloat16" if native else "float32"
    return torch.bfloat16 if precision == "bfloat16" else None


def make_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(total, cfg.get("warmup_fraction", 0.2),
                                                                      cfg.get("final_lr_fraction", 0.0)))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    if cfg.schedule == "step":
        every = cfg.step_size * steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.1 ** (s // every))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def one_cycle(total_steps: int, warmup_fraction: float, final_fraction: float) -> Callable[[int], float]:
    """lr factor of step s: linear from 0 to 1 over the first `warmup_fraction` of the steps, then
    linear down to `final_fraction` at the last step (Smith 2018's one-cycle with linear phases, as
    in Page's DAWNBench ResNet and airbench's triangular schedule)."""
    peak = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < peak:
            return (step + 1) / peak
        return 1.0 - (1.0 - final_fraction) * min(1.0, (step - peak) / max(1, total_steps - 1 - peak))

    return factor


#: (model, images, labels) -> the images to train on (adversarial training, `training/adversarial.py`)
BatchTransform = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def train_classifier(model: nn.Module, data: ImageSet, cfg: DictConfig, device: torch.device,
                     desc: str = "train", batch_transform: BatchTransform | None = None,
                     hooks: Sequence[TrainingHooks] = ()) -> TrainingLog:
    """Train `model` in place with cross-entropy for `cfg.epochs` epochs; returns the epoch log.

    `batch_transform`, when given, replaces each (augmented) batch before the update (adversarial
    training). `train.scheme` adds its hooks (RePr) before `hooks` (e.g. an EpochMonitor, which
    sees the raw weights). With `train.ema_decay` the model ends as the weights' moving average.
    """
    hooks = [*scheme_hooks(cfg, data, device), *hooks]
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch)
    log = TrainingLog([], [])
    model.to(device)
    average = WeightAverage(model, cfg.ema_decay) if cfg.get("ema_decay") is not None else None
    smoothing = cfg.get("label_smoothing", 0.0)
    dtype = autocast_dtype(cfg.get("precision", "float32"), device)
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    for epoch in range(cfg.epochs):
        model.train()
        for hook in hooks:
            hook.start_epoch(epoch, model, optimizer)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = progress(data.batches(cfg.batch_size, shuffle=True, generator=generator, device=device),
                       steps_per_epoch, f"{desc} epoch {epoch + 1}/{cfg.epochs}")
        for images, labels in bar:
            if cfg.augment:
                images = random_crop_flip(images, generator, padding=cfg.get("translate", 4))
            if batch_transform is not None:
                images = batch_transform(model, images, labels)
            with autocast:
                logits = model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update(model)
            for hook in hooks:
                hook.after_step(model, optimizer)
            schedule.step()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            bar.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{correct / max(1, seen):.1%}")
        if not math.isfinite(loss_sum):
            raise TrainingDiverged(f"training diverged: the loss is {loss_sum / len(data)} in epoch {epoch + 1} of "
                                   f"{cfg.epochs} (train.lr={cfg.lr}, train.optimizer={cfg.optimizer}); lower train.lr")
        log.losses.append(loss_sum / len(data))
        log.accuracies.append(correct / len(data))
        for hook in hooks:
            for name, value in hook.end_epoch(epoch, model).items():
                log.extra.setdefault(name, []).append(value)
    if average is not None:
        average.copy_to(model)
    model.eval()
    return log


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels of a float batch, computed in chunks."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
