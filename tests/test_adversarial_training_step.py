"""Adversarial training: PGD examples inside the eps ball, lower adversarial loss, cache key, ME-Net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from defense_cli.attacks.foolbox_attacks import PGD
from defense_cli.config import compose
from defense_cli.data import ImageSet
from defense_cli.defenses.base import Defense, DefenseContext
from defense_cli.training.adversarial import AdversarialBatches, adversarial_batches
from defense_cli.training.classifiers import classifier_key
from defense_cli.training.trainer import train_classifier

EPS = 8 / 255


def toy_set(n: int = 256) -> ImageSet:
    """Two classes told apart by the mean brightness of the left half (a 1x4x4 image)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.rand(n, 1, 4, 4, generator=g) * 0.4 + 0.3
    images[:, :, :, :2] += (labels.float() * 2 - 1).view(-1, 1, 1, 1) * 0.05
    return ImageSet(images.clamp(0, 1), labels)


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def madry_pgd() -> PGD:
    return PGD(eps=EPS, steps=7, step_size=2 / 255)


def adversarial_loss(model: nn.Module, data: ImageSet) -> float:
    images, labels = data.float_images(), data.labels
    adversarial = madry_pgd()(model, images, labels, torch.Generator().manual_seed(1)).adversarial
    with torch.no_grad():
        return F.cross_entropy(model(adversarial), labels).item()


def test_adversarial_batch_is_a_pgd_example_inside_the_eps_ball():
    data, model = toy_set(64), linear_model()
    images, labels = data.float_images(), data.labels
    step = AdversarialBatches(madry_pgd(), None, torch.Generator().manual_seed(0))
    out = step(model, images, labels)
    assert (out - images).abs().max() <= EPS + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)
    with torch.no_grad():
        assert F.cross_entropy(model(out), labels) > F.cross_entropy(model(images), labels)
    assert model.training   # handed back in train mode for the update


def test_adversarial_training_lowers_the_adversarial_loss():
    data = toy_set()
    cfg = OmegaConf.create({"epochs": 3, "batch_size": 32, "optimizer": "sgd", "lr": 0.5, "momentum": 0.9,
                            "weight_decay": 0.0, "schedule": "constant", "step_size": 1, "seed": 0,
                            "augment": False, "scheme": "standard"})
    plain, robust = linear_model(), linear_model()
    train_classifier(plain, data, cfg, torch.device("cpu"))
    step = AdversarialBatches(madry_pgd(), None, torch.Generator().manual_seed(0))
    train_classifier(robust, data, cfg, torch.device("cpu"), batch_transform=step)
    assert adversarial_loss(robust, data) < adversarial_loss(plain, data)


class Halve(Defense):
    def __init__(self) -> None:
        self.calls = 0

    def transform(self, images, generator):
        self.calls += 1
        return images * 0.5


def test_through_a_defense_the_model_trains_on_the_defended_adversarial_batch():
    data, model, defense = toy_set(16), linear_model(), Halve()
    images, labels = data.float_images(), data.labels
    out = AdversarialBatches(madry_pgd(), defense, torch.Generator().manual_seed(0))(model, images, labels)
    assert out.max() <= 0.5 + 1e-6        # defense(x_adv), not x_adv
    assert defense.calls > 7              # the attack's 7 steps went through BPDA(defense) too


def test_train_config_builds_madry_pgd_and_enters_the_cache_key():
    cfg = compose(["attack@train.adversarial=pgd7", "defense@train.adversarial_defense=jpeg"])
    step = adversarial_batches(cfg.train, DefenseContext())
    assert (step.attack.eps, step.attack.steps, step.attack.step_size) == (EPS, 7, 2 / 255)
    assert type(step.defense).__name__ == "JPEG"
    plain = compose()
    assert adversarial_batches(plain.train, DefenseContext()) is None
    keys = {classifier_key(c.dataset, c.model, c.train) for c in
            (plain, cfg, compose(["attack@train.adversarial=pgd7"]),
             compose(["attack@train.adversarial=pgd7", "train.adversarial.steps=10"]))}
    assert len(keys) == 4
