"""`defense-cli bench defenses`: images/s, PSNR and SSIM per defense on CIFAR-10 test images,
with the simple per-image reference version (when one exists) timed on the same batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from defense_cli.bench.cifar import cifar10_jpeg
from defense_cli.bench.references import reference_generator, references
from defense_cli.bench.timing import timed_alternately
from defense_cli.config import compose_group_option, group_options
from defense_cli.defenses import Defense, DefenseContext, build_defense
from defense_cli.image_quality import mean_psnr, psnr, ssim


def bench_classifier_config() -> DictConfig:
    """The model config of the classifier that guides R-CAM and LRC-HSP in the benchmark."""
    return OmegaConf.merge(compose_group_option("model", "small_cnn"), {"width": 32})


@dataclass
class DefenseBenchRow:
    name: str
    images_per_second: float
    psnr: float
    ssim: float
    reference_images_per_second: float | None = None
    max_abs_diff_to_reference: float | None = None
    rmse_to_reference: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.reference_images_per_second is None:
            return None
        return self.images_per_second / self.reference_images_per_second


def bench_context(needs: set[str], cache_dir: Path, device: torch.device, splits) -> DefenseContext:
    """Classifier / training set for defenses that need them (a small CNN trained on CIFAR-10 JPEG)."""
    context = DefenseContext(train_set=splits.train, cache_dir=cache_dir, device=device)
    if "classifier" in needs:
        from defense_cli.training.classifiers import obtain_classifier

        dataset_cfg = compose_group_option("dataset", "cifar10_jpeg")
        train_cfg = OmegaConf.merge(compose_group_option("train", "default"), {"epochs": 3, "augment": True})
        context.classifier = obtain_classifier(dataset_cfg, bench_classifier_config(), train_cfg,
                                               splits, cache_dir, device).model
    return context


def bench_defenses(names: list[str] | None, n_images: int, device: torch.device, cache_dir: Path,
                   repeats: int = 1, with_reference: bool = True, reference_images: int = 64) -> list[DefenseBenchRow]:
    """Benchmark each defense option on the first `n_images` (shuffled) CIFAR-10 test images."""
    names = names or [n for n in group_options("defense") if n != "none"]
    splits = cifar10_jpeg(cache_dir)
    images = splits.test.float_images(slice(0, n_images)).to(device)
    configs = {name: compose_group_option("defense", name) for name in names}
    defenses: dict[str, Defense] = {name: build_defense(cfg) for name, cfg in configs.items()}
    needs = {"classifier" for d in defenses.values() if d.needs_classifier}
    context = bench_context(needs, cache_dir, device, splits)
    refs = references() if with_reference else {}
    rows = []
    for name, defense in defenses.items():
        defense.prepare(context)
        generator = torch.Generator(device=device).manual_seed(0)
        subset = images[:reference_images]
        # the reference takes turns with the batched version, with as many repeats (fair under load)
        fns = [lambda: defense(images, generator)] + ([lambda: refs[name](subset, defense)] if name in refs else [])
        (out, seconds), *reference = timed_alternately(fns, device, repeats)
        row = DefenseBenchRow(name, len(images) / seconds, mean_psnr(psnr(images, out)),
                              ssim(images, out).mean().item())
        if reference:
            ref_out, ref_seconds = reference[0]
            row.reference_images_per_second = len(subset) / ref_seconds
            # a randomized defense is compared on the draw its reference makes (same seed)
            mine = defense(subset, reference_generator(device)) if defense.randomized else out[: len(subset)]
            row.max_abs_diff_to_reference = (ref_out - mine).abs().max().item()
            row.rmse_to_reference = (ref_out - mine).pow(2).mean().sqrt().item()
        rows.append(row)
    return rows
