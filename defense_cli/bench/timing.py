"""Wall-clock timing for benchmarks (CUDA work is synchronised before and after each call)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def timed_alternately(fns: list[Callable[[], torch.Tensor]], device: torch.device,
                      repeats: int) -> list[tuple[torch.Tensor, float]]:
    """Best wall time of each function over `repeats` rounds after one warm-up, the functions taking
    turns within a round so that a change of machine load hits them alike; and their last outputs."""
    results = [(fn(), float("inf")) for fn in fns]
    for _ in range(repeats):
        for index, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            results[index] = (out, min(results[index][1], time.perf_counter() - start))
    return results


def timed(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[torch.Tensor, float]:
    """Best wall time of `repeats` calls after one warm-up, and the last output."""
    return timed_alternately([fn], device, repeats)[0]
