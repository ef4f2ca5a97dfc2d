"""The fast CIFAR-10 model (fast_cifar), its schedule pieces (one-cycle lr, label smoothing, weight
EMA, translation, bfloat16), the CIFAR-10 JPEG dataset and the cifar10_cpu preset."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from conftest import run_cli, runs_in
from defense_cli.config import compose, validate
from defense_cli.data import ImageSet, load_dataset
from defense_cli.data.cifar10_jpeg import cifar10_jpeg_root, shared_data_dir
from defense_cli.defenses.rcam import normalise_map, robust_activation_map
from defense_cli.errors import ConfigError
from defense_cli.models import build_classifier
from defense_cli.models.fast_cifar import FastCifarNet
from defense_cli.training.augment import random_crop_flip
from defense_cli.training.averaging import WeightAverage
from defense_cli.training.trainer import autocast_dtype, one_cycle, train_classifier

REAL_ARCHIVES = shared_data_dir() / "cifar10-jpeg"


def classifier(**model):
    cfg = compose(["experiment=cifar10_cpu", *[f"model.{k}={v}" for k, v in model.items()]])
    return build_classifier(cfg.model, cfg.dataset)


def test_features_head_shapes_and_logits_are_pooled_features():
    model = classifier(test_time_flip=False).eval()
    x = torch.rand(3, 3, 32, 32)
    features = model.features(x)
    width = compose(["experiment=cifar10_cpu"]).model.widths[-1]
    assert model.supports_cam and features.shape == (3, width, 3, 3)
    assert model.head.in_features == width and model.head.out_features == 10
    assert torch.allclose(model(x), model.head(features.mean(dim=(2, 3))), atol=1e-5)


def test_test_time_flip_averages_the_image_and_its_mirror_and_keeps_the_cam_shape():
    model = classifier(test_time_flip=True).eval()
    x = torch.rand(2, 3, 32, 32)
    single = model.backbone.features.inner(model.normalize(x))
    mirrored = model.backbone.features.inner(model.normalize(x.flip(-1)))
    expected = 0.5 * (model.backbone.head(single.mean(dim=(2, 3))) + model.backbone.head(mirrored.mean(dim=(2, 3))))
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert torch.allclose(model(x), model.head(model.features(x).mean(dim=(2, 3))), atol=1e-5)
    assert torch.allclose(model(x), model(x.flip(-1)), atol=1e-5)  # the flip-averaged model is mirror-symmetric
    model.train()
    assert not torch.allclose(model(x), model(x.flip(-1)), atol=1e-3)  # training sees one view


def test_class_activation_maps_work_on_the_model():
    torch.manual_seed(0)
    maps = robust_activation_map(classifier().eval(), torch.rand(2, 3, 32, 32))
    # a [0, 1] map from the 4 x 4 features, resized bilinearly: its peak reaches 1 only at an edge
    assert maps.shape == (2, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert bool((maps.amax(dim=(1, 2)) - maps.amin(dim=(1, 2)) > 0.5).all())
    at_feature_size = normalise_map(torch.rand(2, 4, 4), (4, 4))   # before resizing: exactly [0, 1]
    assert at_feature_size.amin(dim=(1, 2)).tolist() == [0.0, 0.0]
    assert at_feature_size.amax(dim=(1, 2)).tolist() == [1.0, 1.0]


def test_bad_widths_are_named():
    with pytest.raises(ValueError, match=r"widths"):
        FastCifarNet(3, 10, widths=(32, 64))
    with pytest.raises(ValueError, match=r"widths\[1\]=0"):
        FastCifarNet(3, 10, widths=(32, 0, 128))


def test_one_cycle_rises_to_the_peak_then_falls_to_the_final_fraction():
    factor = one_cycle(100, 0.2, 0.1)
    values = [factor(s) for s in range(100)]
    assert values[0] == pytest.approx(1 / 20) and values[19] == pytest.approx(1.0)
    assert max(values) == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(values[:20], values[1:20])) and all(a > b for a, b in zip(values[20:], values[21:]))


def tiny_train_cfg(**changes):
    cfg = compose(["train.epochs=1", "train.schedule=constant", "train.momentum=0", "train.weight_decay=0"]).train
    return OmegaConf.merge(cfg, changes)


def test_the_trained_loss_is_label_smoothed_cross_entropy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    data = ImageSet(torch.rand(16, 3, 2, 2), torch.randint(0, 4, (16,)))
    with torch.no_grad():
        log_p = F.log_softmax(model(data.images), dim=1)
    eps = 0.3
    expected = ((1 - eps) * -log_p.gather(1, data.labels[:, None]).squeeze(1) - eps * log_p.mean(1)).mean()
    log = train_classifier(model, data, tiny_train_cfg(label_smoothing=eps, batch_size=16, lr=1e-9),
                           torch.device("cpu"))
    assert log.losses[0] == pytest.approx(float(expected), rel=1e-5)
    assert not math.isclose(log.losses[0], float(-log_p.gather(1, data.labels[:, None]).mean()), rel_tol=1e-3)


def test_weight_average_is_an_exponential_moving_average_of_weights_and_buffers():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(2.0)
    average.update(model)  # the first update starts the average at the current weights
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(4.0)
    average.update(model)
    average.copy_to(model)
    assert model[0].weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert float(model[1].running_mean) == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    with pytest.raises(ValueError, match="ema_decay=1.5"):
        WeightAverage(model, 1.5)


def test_training_with_ema_ends_on_the_average_not_the_last_weights():
    data = ImageSet(torch.rand(32, 3, 2, 2), torch.randint(0, 4, (32,)))

    def trained(decay):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
        train_classifier(model, data, tiny_train_cfg(ema_decay=decay, batch_size=8, lr=0.5), torch.device("cpu"))
        return model[1].weight.detach().clone()

    plain, averaged = trained(None), trained(0.5)
    assert not torch.allclose(plain, averaged, atol=1e-4)


def test_translation_zero_only_flips_and_translation_two_moves_at_most_two_pixels():
    images = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 0 < int(flipped.sum()) < 64
    moved = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)
    views = torch.stack([moved[..., 2:6, 2:6], moved.flip(-1)[..., 2:6, 2:6]])  # undo a flip either way
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    matches = torch.stack([(views == images[None, ..., 2 + dy:6 + dy, 2 + dx:6 + dx]).flatten(2).all(2).any(0)
                           for dy, dx in shifts])  # (shifts, images)
    assert bool(matches.any(0).all())  # every image is a translation by at most 2 pixels (maybe mirrored)
    assert int(matches[shifts.index((0, 0))].sum()) < 64 // 2  # and most of them did move


def test_bfloat16_training_keeps_float32_weights_and_learns():
    torch.manual_seed(0)
    model = FastCifarNet(3, 10, widths=(8, 8, 8), stem_width=8)
    data = ImageSet(torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    before = model.head.weight.detach().clone()
    log = train_classifier(model, data, tiny_train_cfg(precision="bfloat16", batch_size=16, lr=0.1),
                           torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.allclose(before, model.head.weight) and math.isfinite(log.losses[0])


def test_the_preset_composes_validates_and_builds():
    cfg = compose(["experiment=cifar10_cpu"])
    validate(cfg)
    assert (cfg.dataset.name, cfg.model.name, cfg.dataset.limit) == ("cifar10_jpeg", "fast_cifar", 500)
    assert (cfg.train.schedule, cfg.train.label_smoothing, cfg.train.translate) == ("onecycle", 0.2, 2)
    assert cfg.train.augment and cfg.train.ema_decay is not None
    assert build_classifier(cfg.model, cfg.dataset)(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_bad_schedule_values_are_refused_with_the_allowed_ones():
    for override, words in [("train.schedule=linear", ["train.schedule", "onecycle"]),
                            ("train.label_smoothing=1.5", ["train.label_smoothing", "[0, 1)"]),
                            ("train.ema_decay=1", ["train.ema_decay", "(0, 1)"]),
                            ("train.precision=float16", ["train.precision", "bfloat16"])]:
        with pytest.raises(ConfigError) as err:
            validate(compose(["experiment=cifar10_cpu", override]))
        assert all(w in str(err.value) for w in words)


def small_real_archives(folder: Path, train_per_class: int, test_per_class: int) -> Path:
    """train.tar.gz / test.tar.gz holding real CIFAR-10 JPEG test images (the first of each class)."""
    taken: dict[str, int] = {}
    members = {"train": [], "test": []}
    with tarfile.open(REAL_ARCHIVES / "test.tar.gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            cls = Path(member.name).parent.name
            n = taken.get(cls, 0)
            if n >= train_per_class + test_per_class:
                continue
            taken[cls] = n + 1
            split = "train" if n < train_per_class else "test"
            members[split].append((f"{split}/{cls}/{Path(member.name).name}", tar.extractfile(member).read()))
    folder.mkdir(parents=True)
    for split, files in members.items():
        with tarfile.open(folder / f"{split}.tar.gz", "w:gz") as out:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    return folder


needs_data = pytest.mark.skipif(not (REAL_ARCHIVES / "test.tar.gz").is_file(), reason="CIFAR-10 JPEG copy absent")


@needs_data
def test_the_dataset_unpacks_once_and_reads_real_images(tmp_path):
    archives = small_real_archives(tmp_path / "archives", 3, 2)
    cfg = OmegaConf.merge(compose(["dataset=cifar10_jpeg"]).dataset, {"archives": str(archives)})
    splits = load_dataset(cfg, tmp_path / "cache")
    assert (len(splits.train), len(splits.test)) == (30, 20) and splits.train.shape == (3, 32, 32)
    assert splits.classes[0] == "airplane" and sorted(splits.test.labels.tolist()) == sorted(list(range(10)) * 2)
    marker = tmp_path / "cache" / "cifar10-jpeg" / ".train.done"
    stamp = marker.stat().st_mtime_ns
    cifar10_jpeg_root(tmp_path / "cache", archives)
    assert marker.stat().st_mtime_ns == stamp


def test_missing_archives_name_the_folder(tmp_path):
    cfg = OmegaConf.merge(compose(["dataset=cifar10_jpeg"]).dataset, {"archives": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="nowhere"):
        load_dataset(cfg, tmp_path / "cache")


@needs_data
@pytest.mark.slow
def test_run_with_the_preset_trains_one_epoch_and_attacks_end_to_end(home, tmp_path):
    archives = small_real_archives(tmp_path / "archives", 40, 4)
    result = run_cli("run", "experiment=cifar10_cpu", f"dataset.archives={archives}", "dataset.limit=24",
                     "train.epochs=1", "train.batch_size=100", "attack.steps=2", f"paths.home={home}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_in(home)
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert (tags["dataset"], tags["model"]) == ("cifar10_jpeg", "fast_cifar")
    assert metrics["n_images"] == 24 and 0.0 <= metrics["robust_accuracy"] <= metrics["clean_accuracy"] <= 1.0
    assert run.data.params["train.schedule"] == "onecycle"


def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype("float32", cpu) is None and autocast_dtype("bfloat16", cpu) is torch.bfloat16
    for native, expected in [(True, torch.bfloat16), (False, None)]:
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        assert autocast_dtype("auto", cpu) is expected
    assert compose(["experiment=cifar10_cpu"]).train.precision == "auto"
