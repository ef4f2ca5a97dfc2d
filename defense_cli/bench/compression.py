"""`defense-cli bench compression`: VGG16-BN (CIFAR) at full, 1/2 and 1/4 rank: MACs/FLOPs and
measured CPU latency per image, against `000_1720f31fb7e6036a.txt` Table 2.2 (VGG16: 8.71 ms,
4.94 ms (1.76x), 3.13 ms (2.78x) on an i7-7800X).

Weights are untrained (timing does not depend on them); the decomposed layers come from the
data-free SVD of each kernel (`data_free_lowrank`), with the same shapes L1-LRAR produces: every
conv but the first and last becomes m basic filters + a 1x1 conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from defense_cli.compression.cost import count_flops, median_latency, parameter_count
from defense_cli.compression.decompose import data_free_lowrank
from defense_cli.config import compose_group_option
from defense_cli.models import build_classifier

CIFAR = OmegaConf.create({"name": "cifar10", "channels": 3, "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3})
THESIS_SPEEDUP = {1.0: 1.0, 0.5: 1.76, 0.25: 2.78}  # Table 2.2, VGG16


@dataclass
class CompressionBenchRow:
    rank: float
    params: int
    macs: int
    latency_ms: float
    speedup: float
    flops_ratio: float
    thesis_speedup: float | None


def bench_compression(ranks: list[float], device: torch.device, batch_size: int, repeats: int,
                      warmup: int) -> list[CompressionBenchRow]:
    """One row per rank (1.0 = the original model): cost, median latency per image, and speed-ups."""
    torch.manual_seed(0)
    original = build_classifier(compose_group_option("model", "vgg16_bn"), CIFAR).to(device).eval()
    shape = (batch_size, 3, 32, 32)
    rows, base = [], None
    for rank in ranks:
        model = original if rank == 1.0 else data_free_lowrank(original, rank, (3, 32, 32))
        macs = count_flops(model, (1, 3, 32, 32)) // 2
        latency = 1000 * median_latency(model, shape, device, repeats, warmup) / batch_size
        base = base or (macs, latency)
        rows.append(CompressionBenchRow(rank, parameter_count(model), macs, latency, base[1] / latency,
                                        base[0] / macs, THESIS_SPEEDUP.get(rank)))
    return rows
