"""The attack benchmark compares like with like: the foolbox adapter and the torch loop agree."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import tiny_model

from defense_cli.attacks.foolbox_attacks import PGD
from defense_cli.bench.attacks import bench_attacks, torch_pgd


def test_foolbox_pgd_adapter_equals_the_hand_written_loop():
    model = tiny_model()
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = model(images).argmax(1)
    adapter = PGD(eps=0.03, steps=4, step_size=0.01, random_start=False)(model, images, labels).adversarial
    torch.testing.assert_close(adapter, torch_pgd(model, images, labels, 0.03, 0.01, 4), atol=1e-6, rtol=0)


def test_bench_attacks_reports_both_speeds_for_a_model():
    row, = bench_attacks(["small_cnn"], n_images=2, steps=1, device=torch.device("cpu"))
    assert row.input_shape == (1, 28, 28)
    assert row.foolbox_steps_per_second > 0 and row.loop_steps_per_second > 0
    assert row.max_abs_diff < 1e-5


def test_bench_attacks_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="model='vgg99'"):
        bench_attacks(["vgg99"], 2, 1, torch.device("cpu"))
