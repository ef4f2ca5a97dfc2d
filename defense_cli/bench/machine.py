"""A one-line description of the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform

import torch


def describe_machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text
