"""Compute cost: FLOPs and MACs counted by torch's FlopCounterMode, eq. 2.4 / 2.7, parameters, latency.

FlopCounterMode counts a multiply-add as 2 FLOPs and ignores bias additions; the thesis's "FLOPs"
(eq. 2.4, 2.7, Table 2.6) count multiplications only, i.e. MACs = FLOPs / 2. Both are reported.
Latency is the median wall time of repeated forward passes after warm-up (CUDA synchronised).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of `module` on a zero input of `input_shape` (batch included)."""
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(*input_shape, device=device))
    module.train(was_training)
    return int(counter.get_total_flops())


def conv_macs(n: int, c: int, kh: int, kw: int, h_out: int, w_out: int) -> int:
    """eq. 2.4: C_orig = n (h_o w_o) (k^2 c)."""
    return n * h_out * w_out * kh * kw * c


def lowrank_macs(n: int, m: int, c: int, kh: int, kw: int, h_out: int, w_out: int) -> int:
    """eq. 2.7: C_decomp = m (h_o w_o)(k^2 c) + n (h_o w_o) m."""
    return m * h_out * w_out * kh * kw * c + n * h_out * w_out * m


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def median_latency(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, repeats: int,
                   warmup: int) -> float:
    """Median seconds of `repeats` forward passes on a random batch of `input_shape`, after `warmup` passes."""
    model.eval()
    images = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0)).to(device)

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        once()
    return statistics.median(once() for _ in range(repeats))
