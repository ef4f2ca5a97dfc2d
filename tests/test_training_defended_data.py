"""Training on defended images (`train.preprocess`): the defended set, its cache, and defenses that need a classifier."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from defense_cli.config import compose_group_option
from defense_cli.data import DatasetSplits, ImageSet, load_dataset
from defense_cli.defenses import build_defense
from defense_cli.training.classifiers import obtain_classifier
from defense_cli.training.defended_data import defended_training_set

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """96 training and 32 test digits of mnist5k, with its dataset config."""
    dataset_cfg = compose_group_option("dataset", "mnist5k")
    splits = load_dataset(dataset_cfg, tmp_path_factory.mktemp("data"))
    take = lambda s, n: ImageSet(s.images[:n], s.labels[:n])  # noqa: E731
    return dataset_cfg, DatasetSplits(take(splits.train, 96), take(splits.test, 32), splits.classes)


def _train_cfg():
    return OmegaConf.merge(compose_group_option("train", "default"), {"epochs": 1, "device": "cpu"})


def test_defended_set_is_the_defense_of_every_training_image_and_is_cached(tiny, tmp_path):
    dataset_cfg, splits = tiny
    defense_cfg = compose_group_option("defense", "bit_depth")
    defended = defended_training_set(splits.train, defense_cfg, dataset_cfg, tmp_path, CPU, seed=0)
    expected = build_defense(defense_cfg)(splits.train.float_images()).mul(255).round().to(torch.uint8)
    assert torch.equal(defended.images, expected) and torch.equal(defended.labels, splits.train.labels)
    again = defended_training_set(splits.train, defense_cfg, dataset_cfg, tmp_path, CPU, seed=0)
    assert torch.equal(again.images, defended.images)
    assert len(list((tmp_path / "defended").glob("bit_depth-*.pt"))) == 1


def test_a_defense_that_needs_a_classifier_gets_the_clean_model_when_training(tiny, tmp_path):
    dataset_cfg, splits = tiny
    model_cfg = OmegaConf.merge(compose_group_option("model", "small_cnn"), {"width": 4})
    preprocess = compose_group_option("defense", "semantic_jpeg")
    trained = obtain_classifier(dataset_cfg, model_cfg, OmegaConf.merge(_train_cfg(), {"preprocess": preprocess}),
                                splits, tmp_path, CPU)
    clean = obtain_classifier(dataset_cfg, model_cfg, _train_cfg(), splits, tmp_path, CPU)
    assert clean.cache_hit and clean.key != trained.key   # the clean model was trained first, for the CAMs
    assert len(list((tmp_path / "models").glob("*.pt"))) == 2
    [saved] = (tmp_path / "defended").glob("semantic_jpeg-*.pt")
    defended = defended_training_set(splits.train, preprocess, dataset_cfg, tmp_path, CPU, 0, (clean.key, clean.model))
    assert list((tmp_path / "defended").glob("semantic_jpeg-*.pt")) == [saved]   # the same set, from the cache
    assert not torch.equal(defended.images, splits.train.images)


def test_a_defense_that_needs_a_classifier_and_gets_none_says_so(tiny, tmp_path):
    dataset_cfg, splits = tiny
    with pytest.raises(ValueError, match="classifier"):
        defended_training_set(splits.train, compose_group_option("defense", "semantic_jpeg"), dataset_cfg,
                              tmp_path, CPU, seed=0)
    assert not list(tmp_path.glob("defended/*.pt"))


def test_adversarial_batches_defend_with_the_model_in_eval_mode():
    from defense_cli.attacks import build_attack
    from defense_cli.defenses import DefenseContext
    from defense_cli.models import Classifier
    from defense_cli.models.architectures import small_cnn
    from defense_cli.training.adversarial import AdversarialBatches

    torch.manual_seed(0)
    model = Classifier(small_cnn(1, 10, width=4), [0.5], [0.25])
    defense = build_defense(compose_group_option("defense", "pixel_deflection"))   # R-CAM: runs the model
    defense.prepare(DefenseContext(classifier=model))
    step = AdversarialBatches(build_attack(compose_group_option("attack", "fgsm")), defense,
                              torch.Generator().manual_seed(0))
    statistics = [b.clone() for b in model.buffers()]
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    out = step(model, images, torch.arange(8) % 10)
    assert out.shape == images.shape and model.training
    assert all(torch.equal(a, b) for a, b in zip(statistics, model.buffers()))


def test_adversarial_training_through_a_cam_defense_trains(tiny, tmp_path):
    dataset_cfg, splits = tiny
    model_cfg = OmegaConf.merge(compose_group_option("model", "small_cnn"), {"width": 4})
    train_cfg = OmegaConf.merge(_train_cfg(), {"adversarial": OmegaConf.merge(compose_group_option("attack", "pgd7"),
                                                                              {"steps": 1}),
                                               "adversarial_defense": compose_group_option("defense", "semantic_jpeg")})
    trained = obtain_classifier(dataset_cfg, model_cfg, train_cfg, splits, tmp_path, CPU)
    assert not trained.cache_hit and 0 <= trained.train_accuracy <= 1
