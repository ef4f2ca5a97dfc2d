"""A one-line description of the machine a benchmark ran on."""

from __future__ import annotations

import os

import torch

from defense_cli.environment import cpu_model


def describe_machine(device: torch.device) -> str:
    text = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text
