"""RePr training (`002_fc3b45851f5789b0.txt` ch. 5.4, Algorithm 3): train, prune, retrain, re-init.

For N cycles: train the full network S1 epochs; rank every conv filter of the network with the
metric R (ch. 5.5: `ortho`, eq. 5.1-5.2, by default) and drop the globally most redundant p of
them; train the sub-network S2 epochs with the dropped filters held at zero; then re-initialise
them orthogonally to the kept filters, with their BatchNorm parameters and optimiser state reset
(Algorithm 3, lines 10-12). The epochs left after the N cycles train the full network.

S1 and S2 are epochs: Figure 5.1 trains 100 epochs with S1 = 20, S2 = 10, N = 3, its shaded
sub-network periods are 10 epochs long, and 10 full-network epochs follow the last cycle; so
`train.epochs` must exceed N * (S1 + S2). The paper's defaults (section 5.8.1) are S1 = 20,
S2 = 10, p = 30 %, N = 3. The learning-rate schedule runs over all `train.epochs` unchanged.

The filter surgery is in `filters.py`, the metrics in `filter_ranking.py`; this module is the
schedule, plugged into `train_classifier` as hooks (`scheme_hooks`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from defense_cli.data import ImageSet
from defense_cli.training.filter_ranking import (METRICS, oracle_scores, ortho_scores, random_scores,
                                                 select_dropped, weight_norm_scores)
from defense_cli.training.filters import ConvUnit, conv_units, reinitialize_filters, zero_filters
from defense_cli.training.hooks import TrainingHooks

log = logging.getLogger(__name__)

SCHEMES = ("standard", "repr")


@dataclass(frozen=True)
class RePrSettings:
    """S1, S2 (epochs), N (cycles), p (fraction dropped), the ranking metric, Oracle sample count."""

    s1: int = 20
    s2: int = 10
    n: int = 3
    p: float = 0.3
    metric: str = "ortho"
    oracle_samples: int = 1000

    def __post_init__(self) -> None:
        for name in ("s1", "s2", "n", "oracle_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.repr.{name}={value!r} must be an integer >= 1")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 < self.p < 1:
            raise ValueError(f"train.repr.p={self.p!r} must be a fraction in (0, 1), e.g. 0.3 for 30 %")
        if self.metric not in METRICS:
            raise ValueError(f"train.repr.metric={self.metric!r} is unknown; allowed: {', '.join(METRICS)}")

    @classmethod
    def from_config(cls, train_cfg: DictConfig) -> RePrSettings:
        """The `train.repr` node, checked against `train.epochs`."""
        node = train_cfg.get("repr")
        if node is None:
            raise ValueError("train.scheme=repr needs a train.repr section: use train=repr")
        settings = cls(**dict(node))
        settings.check_epochs(train_cfg.epochs)
        return settings

    @property
    def cycle(self) -> int:
        return self.s1 + self.s2

    def check_epochs(self, epochs: int) -> None:
        if epochs <= self.n * self.cycle:
            raise ValueError(
                f"train.epochs={epochs} leaves no full-network training after the RePr cycles: it must "
                f"exceed train.repr.n * (s1 + s2) = {self.n} * ({self.s1} + {self.s2}) = {self.n * self.cycle}")

    def drops_at(self, epoch: int) -> bool:
        """True when epoch `epoch` (0-based) starts a sub-network phase."""
        return epoch < self.n * self.cycle and epoch % self.cycle == self.s1

    def reinitializes_at(self, epoch: int) -> bool:
        """True when epoch `epoch` starts a full-network phase after a sub-network phase."""
        return 0 < epoch <= self.n * self.cycle and epoch % self.cycle == 0


class RePrHooks(TrainingHooks):
    """Algorithm 3 as training hooks: drop at the start of each sub-network phase, hold the dropped
    filters at zero after every optimiser step, re-initialise them when the phase ends."""

    def __init__(self, settings: RePrSettings, data: ImageSet, device: torch.device, seed: int) -> None:
        self.settings = settings
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.oracle_data = _subset(data, settings.oracle_samples, self.generator) if settings.metric == "oracle" else data
        self.units: list[ConvUnit] = []
        self.dropped: list[torch.Tensor] = []

    def start_epoch(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.units = self.units or conv_units(model)  # a model without conv layers fails at epoch 0
        if self.settings.reinitializes_at(epoch):
            self.reinitialize(optimizer)
        if self.settings.drops_at(epoch):
            self.drop(model, optimizer)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for unit, filters in zip(self.units, self.dropped):
            if len(filters):
                zero_filters(unit, filters, optimizer)

    def end_epoch(self, epoch: int, model: nn.Module) -> dict[str, float]:
        return {"repr_dropped_filters": float(sum(len(f) for f in self.dropped))}

    def drop(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Rank every filter (Algorithm 3, lines 5-6) and zero the chosen ones."""
        scores = self.rank(model)
        self.dropped = [f.to(unit.conv.weight.device) for unit, f in
                        zip(self.units, select_dropped(scores, self.settings.p))]
        self.after_step(model, optimizer)
        log.info("RePr: dropped %s filters per layer (%s)", [len(f) for f in self.dropped], self.settings.metric)

    def rank(self, model: nn.Module) -> list[torch.Tensor]:
        metric = self.settings.metric
        if metric == "ortho":
            return [ortho_scores(unit) for unit in self.units]
        if metric == "weight_norm":
            return [weight_norm_scores(unit) for unit in self.units]
        if metric == "random":
            return [random_scores(unit, self.generator) for unit in self.units]
        return oracle_scores(model, self.units, self.oracle_data, self.device)

    def reinitialize(self, optimizer: torch.optim.Optimizer) -> None:
        """Algorithm 3, lines 10-12: fresh filters orthogonal to the kept ones; BN and state reset."""
        for unit, filters in zip(self.units, self.dropped):
            if len(filters):
                reinitialize_filters(unit, filters, self.generator, optimizer)
        self.dropped = [f[:0] for f in self.dropped]


def scheme_hooks(train_cfg: DictConfig, data: ImageSet, device: torch.device) -> list[TrainingHooks]:
    """The hooks of `train.scheme`: none for `standard`, `RePrHooks` for `repr`."""
    scheme = train_cfg.scheme
    if scheme not in SCHEMES:
        raise ValueError(f"train.scheme={scheme!r} is unknown; allowed: {', '.join(SCHEMES)}")
    if scheme == "standard":
        return []
    return [RePrHooks(RePrSettings.from_config(train_cfg), data, device, train_cfg.seed)]


def _subset(data: ImageSet, count: int, generator: torch.Generator) -> ImageSet:
    """`count` images of `data` drawn without replacement (all of them when there are fewer)."""
    if count >= len(data):
        return data
    index = torch.randperm(len(data), generator=generator)[:count]
    return ImageSet(data.images[index], data.labels[index])
