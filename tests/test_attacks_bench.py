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


def test_bench_eot_times_batched_draws_against_a_loop_of_draws():
    from defense_cli.bench.attacks import bench_eot

    row, = bench_eot(["pd_wavelet"], n_images=2, steps=1, eot_samples=2,
                     device=torch.device("cpu"))
    assert row.batched_seconds > 0 and row.loop_seconds > 0 and row.eot_samples == 2


def test_bench_eot_refuses_a_deterministic_defense():
    from defense_cli.bench.attacks import bench_eot

    with pytest.raises(ValueError, match="defense='jpeg' is not random"):
        bench_eot(["jpeg"], 2, 1, 2, torch.device("cpu"))


def test_looped_eot_reference_averages_the_same_draws_as_the_batched_target():
    from defense_cli.attacks.bpda import DefendedClassifier
    from defense_cli.bench.attacks import LoopedEOT
    from defense_cli.defenses.base import Defense

    class Noise(Defense):
        randomized = True

        def transform(self, images, generator):
            return (images + 0.1 * torch.rand(images.shape, generator=generator)).clamp(0, 1)

    model, images = tiny_model(), torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    batched = DefendedClassifier(model, Noise(), torch.Generator().manual_seed(4), eot_samples=3)(images)
    looped = LoopedEOT(model, Noise(), torch.Generator().manual_seed(4), 3)(images)
    torch.testing.assert_close(batched, looped)
