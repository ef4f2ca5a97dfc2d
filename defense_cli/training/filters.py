"""Convolutional filters as units: find them, hold a set of them at zero, re-initialise them.

This is the filter surgery of RePr (`002_fc3b45851f5789b0.txt` ch. 5.4, Algorithm 3, lines 6-12).
A *filter* is one output channel of a `Conv2d` (its c x k x k weights and its bias), seen as the
flattened row vector f of section 5.5. Its *BatchNorm* is the `BatchNorm2d` that directly follows
the conv in module order with matching channels (conv -> bn -> relu in every backbone here and in
torchvision's ResNets); a conv with no such BN has none.

Choices where the text is silent (written here and in docs/repr-training.md):
- While dropped, a filter's weights, bias and its BN gamma and beta are held at zero, so the
  channel's output is exactly zero (zero weights alone would leave the BN shift beta).
- Re-initialised filters span a random orthonormal basis of the null space of the kept filters of
  their layer (so they are orthogonal to the kept ones and to each other); when that null space is
  smaller than the number of dropped filters, the remaining ones are random Gaussian directions.
  Each new filter gets the mean L2 norm of the kept filters of its layer.
- Their BN gets gamma = 1, beta = 0, running mean 0 and running variance 1; every optimiser state
  slice of the same shape as the parameter (SGD momentum, Adam moments) is zeroed at the filter.
  Adam's per-tensor step count cannot be reset per filter and is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ConvUnit:
    """One conv layer whose output channels are RePr filters, with the BN that normalises them."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None

    @property
    def num_filters(self) -> int:
        return self.conv.out_channels

    def matrix(self) -> torch.Tensor:
        """W_l of section 5.5: one flattened filter (c * k * k values) per row."""
        return self.conv.weight.reshape(self.num_filters, -1)

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter with one slice per filter along dim 0."""
        params = [self.conv.weight] + ([self.conv.bias] if self.conv.bias is not None else [])
        if self.bn is not None and self.bn.affine:
            params += [self.bn.weight, self.bn.bias]
        return params


def conv_units(model: nn.Module) -> list[ConvUnit]:
    """The dense (groups == 1) conv layers of `model` in module order, each with its BatchNorm."""
    modules = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    units = []
    for index, (name, module) in enumerate(modules):
        if not isinstance(module, nn.Conv2d) or module.groups != 1:
            continue
        follower = modules[index + 1][1] if index + 1 < len(modules) else None
        bn = follower if isinstance(follower, nn.BatchNorm2d) and follower.num_features == module.out_channels else None
        units.append(ConvUnit(name, module, bn))
    if not units:
        raise ValueError(f"model {type(model).__name__} has no conv layer: RePr drops conv filters")
    return units


@torch.no_grad()
def zero_filters(unit: ConvUnit, filters: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Hold `filters` (indices) of `unit` at zero: weights, bias, BN scale and shift, optimiser state."""
    for param in unit.parameters():
        param[filters] = 0
    reset_optimizer_state(optimizer, unit, filters)


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer | None, unit: ConvUnit, filters: torch.Tensor) -> None:
    """Zero every per-element optimiser state (momentum buffer, Adam moments) at `filters`."""
    if optimizer is None:
        return
    for param in unit.parameters():
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value[filters] = 0


@torch.no_grad()
def reinitialize_filters(unit: ConvUnit, filters: torch.Tensor, generator: torch.Generator,
                         optimizer: torch.optim.Optimizer | None = None) -> None:
    """Give `filters` fresh weights orthogonal to the kept filters of the layer; reset BN and state."""
    weights = unit.matrix()
    kept = torch.ones(unit.num_filters, dtype=torch.bool, device=weights.device)
    kept[filters] = False
    fresh = orthogonal_complement_rows(weights[kept].double(), len(filters), generator)
    norm = weights[kept].norm(dim=1).mean() if kept.any() else weights.new_tensor(1.0)
    unit.conv.weight[filters] = (fresh * norm.double()).to(weights.dtype).reshape(-1, *unit.conv.weight.shape[1:])
    if unit.conv.bias is not None:
        unit.conv.bias[filters] = 0
    if unit.bn is not None:
        reset_batchnorm_channels(unit.bn, filters)
    reset_optimizer_state(optimizer, unit, filters)


def orthogonal_complement_rows(kept: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` unit rows orthogonal to the rows of `kept` (and to each other) where the space allows.

    The null space of `kept` comes from its SVD; a random rotation within it (QR of a Gaussian
    matrix drawn from `generator`) picks the new rows. Rows beyond the null space's dimension are
    random unit Gaussian vectors.
    """
    dim = kept.shape[1]
    null_basis = null_space_basis(kept)
    in_null = min(count, null_basis.shape[1])
    rows = []
    if in_null:
        gaussian = torch.randn(null_basis.shape[1], in_null, generator=generator, dtype=kept.dtype)
        rotation, _ = torch.linalg.qr(gaussian.to(kept.device))
        rows.append((null_basis @ rotation).T)
    if count > in_null:
        extra = torch.randn(count - in_null, dim, generator=generator, dtype=kept.dtype).to(kept.device)
        rows.append(extra / extra.norm(dim=1, keepdim=True))
    return torch.cat(rows) if rows else kept.new_zeros(0, dim)


def null_space_basis(rows: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal columns spanning the vectors orthogonal to every row of `rows` (dim x r)."""
    dim = rows.shape[1]
    if rows.shape[0] == 0:
        return torch.eye(dim, dtype=rows.dtype, device=rows.device)
    _, singular, vh = torch.linalg.svd(rows, full_matrices=True)
    rank = int((singular > rtol * singular.max().clamp_min(torch.finfo(rows.dtype).tiny)).sum())
    return vh[rank:].T


@torch.no_grad()
def reset_batchnorm_channels(bn: nn.BatchNorm2d, channels: torch.Tensor) -> None:
    """BN of a re-initialised filter as fresh: gamma 1, beta 0, running mean 0, running variance 1."""
    if bn.affine:
        bn.weight[channels] = 1
        bn.bias[channels] = 0
    if bn.track_running_stats and bn.running_mean is not None:
        bn.running_mean[channels] = 0
        bn.running_var[channels] = 1
