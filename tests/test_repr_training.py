"""RePr schedule (Algorithm 3) inside train_classifier, its config checks, and the logged history."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from defense_cli.config import compose
from defense_cli.tasks.prepare import check_config
from defense_cli.data import ImageSet
from defense_cli.errors import ConfigError
from defense_cli.models.vanilla import convnet
from defense_cli.training.filters import conv_units
from defense_cli.training.hooks import TrainingHooks
from defense_cli.training.monitor import EpochMonitor
from defense_cli.training.repr import RePrSettings
from defense_cli.training.trainer import train_classifier


def test_schedule_of_the_paper_defaults():
    settings = RePrSettings()
    assert [e for e in range(100) if settings.drops_at(e)] == [20, 50, 80]
    assert [e for e in range(100) if settings.reinitializes_at(e)] == [30, 60, 90]


@pytest.mark.parametrize("field, value", [("s1", 0), ("s2", 0), ("n", 0), ("p", 0.0), ("p", 1.0),
                                          ("p", 30), ("metric", "taylor"), ("s1", 1.5)])
def test_bad_settings_name_the_value(field, value):
    with pytest.raises(ValueError, match=f"train.repr.{field}={value!r}"):
        RePrSettings(**{field: value})


@pytest.mark.parametrize("override, key", [
    ("train.repr.p=1.5", "train.repr.p=1.5"), ("train.repr.s1=0", "train.repr.s1=0"),
    ("train.repr.n=0", "train.repr.n=0"), ("train.repr.metric=taylor", "train.repr.metric='taylor'"),
    ("train.epochs=90", "train.epochs=90"), ("train.scheme=reaper", "train.scheme='reaper'"),
])
def test_config_validation_rejects_bad_repr_values(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(compose(["train=repr", override]))


def test_repr_config_composes_with_paper_defaults():
    cfg = compose(["train=repr", "model=convnet"])
    check_config(cfg)
    assert cfg.train.scheme == "repr"
    assert OmegaConf.to_container(cfg.train.repr) == {"s1": 20, "s2": 10, "n": 3, "p": 0.3, "metric": "ortho",
                                                      "oracle_samples": 1000}
    assert compose().train.scheme == "standard"


class WeightRecorder(TrainingHooks):
    """Copies of the conv weights and the optimiser momentum at the end of every epoch."""

    def __init__(self):
        self.weights, self.momenta, self.optimizer = [], [], None

    def start_epoch(self, epoch, model, optimizer):
        self.optimizer = optimizer

    def end_epoch(self, epoch, model):
        units = conv_units(model)
        self.weights.append([u.conv.weight.detach().clone() for u in units])
        self.momenta.append([self.optimizer.state[u.conv.weight]["momentum_buffer"].clone() for u in units])
        return {}


def tiny_data(n=64):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 8, 8, generator=generator)
    labels = (images[:, 0, :4].mean(dim=(1, 2)) > images[:, 0, 4:].mean(dim=(1, 2))).long()
    return ImageSet(images, labels)


def repr_cfg(metric="ortho", epochs=5):
    return OmegaConf.create({
        "scheme": "repr", "epochs": epochs, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
        "weight_decay": 5e-4, "schedule": "constant", "step_size": 1, "seed": 0, "augment": False,
        "repr": {"s1": 1, "s2": 2, "n": 1, "p": 0.3, "metric": metric, "oracle_samples": 32},
    })


@pytest.mark.parametrize("metric", ["ortho", "weight_norm", "random", "oracle"])
def test_repr_holds_dropped_filters_at_zero_then_reinitializes_them(metric):
    torch.manual_seed(0)
    model = convnet(1, 2, depth=2, width=6, image_size=8)
    recorder = WeightRecorder()
    log = train_classifier(model, tiny_data(), repr_cfg(metric), torch.device("cpu"), hooks=[recorder])
    assert log.extra["repr_dropped_filters"] == [0.0, 4.0, 4.0, 0.0, 0.0]  # round(0.3 * 12) = 4
    zero_rows = [[(w.reshape(len(w), -1).abs().sum(1) == 0) for w in epoch] for epoch in recorder.weights]
    dropped_mask = zero_rows[1]
    assert sum(int(m.sum()) for m in dropped_mask) == 4
    for layer, mask in enumerate(dropped_mask):
        assert torch.equal(zero_rows[2][layer], mask)  # still zero after the second sub-network epoch
        assert not zero_rows[3][layer].any()  # re-initialised and trained again
        assert torch.equal(recorder.momenta[2][layer][mask], torch.zeros_like(recorder.momenta[2][layer][mask]))


def test_monitor_logs_ortho_sum_and_test_accuracy_per_epoch():
    torch.manual_seed(0)
    model = convnet(1, 2, depth=2, width=6, image_size=8)
    data = tiny_data()
    monitor = EpochMonitor(lambda m: (m(data.images).argmax(1) == data.labels).float().mean().item())
    log = train_classifier(model, data, repr_cfg(), torch.device("cpu"), hooks=[monitor])
    series = log.per_epoch()
    assert set(series) >= {"train_loss", "train_accuracy", "test_accuracy", "ortho_sum", "repr_dropped_filters"}
    assert all(len(v) == 5 for v in series.values())
    assert all(s > 0 for s in series["ortho_sum"])


def test_standard_scheme_adds_no_repr_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    cfg = repr_cfg()
    cfg.scheme = "standard"
    log = train_classifier(model, tiny_data(), cfg, torch.device("cpu"), hooks=[EpochMonitor()])
    assert set(log.extra) == {"ortho_sum"}


@pytest.mark.parametrize("train", ["default", "repr"])
def test_repr_experiment_config_composes_for_both_schemes(train):
    cfg = compose(["experiment=prakash2019_repr_mnist5k", f"train={train}"])
    check_config(cfg)
    assert cfg.model.name == "convnet" and cfg.train.epochs == 50
    assert cfg.train.scheme == ("repr" if train == "repr" else "standard")


def test_repr_on_a_model_without_conv_layers_fails_before_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(ValueError, match="no conv layer"):
        train_classifier(model, tiny_data(), repr_cfg(), torch.device("cpu"))
    assert model[1].weight.grad is None  # not a single step was taken
