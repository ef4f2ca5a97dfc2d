"""Image quilting: outputs are database patches, near neighbours, batched, seeded, validated."""

import pytest
import torch

from defense_cli.data import ImageSet
from defense_cli.defenses import DefenseContext
from defense_cli.defenses.fitted import random_patches
from defense_cli.defenses.quilting import Quilting, nearest_random_choice


def _train_set(n=40, channels=3, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, channels, size, size, generator=g) * 255).to(torch.uint8)
    return ImageSet(images, torch.zeros(n, dtype=torch.long))


def _prepared(tmp_path=None, **kwargs):
    params = dict(patch_size=4, overlap=0, neighbors=3, database_size=500, train_images=40)
    params.update(kwargs)
    defense = Quilting(**params)
    defense.prepare(DefenseContext(train_set=_train_set(), cache_dir=tmp_path))
    return defense


def test_random_patches_are_crops_of_the_images():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    patches = random_patches(images, 3, 20, torch.Generator().manual_seed(0))
    assert patches.shape == (20, 1, 3, 3)
    crops = images.unfold(2, 3, 1).unfold(3, 3, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, 3, 3)
    for patch in patches:
        assert (crops == patch).all(dim=(1, 2, 3)).any()


def test_with_one_neighbour_the_nearest_patch_is_chosen():
    database = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    queries = torch.tensor([[0.9, 1.2], [4.0, 6.0], [-1.0, 0.1]])
    chosen = nearest_random_choice(queries, database, 1, torch.Generator().manual_seed(0))
    assert chosen.tolist() == [1, 2, 0]


def test_random_choice_stays_among_the_k_nearest():
    database = torch.arange(10, dtype=torch.float32)[:, None]
    queries = torch.zeros(500, 1)
    chosen = nearest_random_choice(queries, database, 3, torch.Generator().manual_seed(0))
    assert set(chosen.tolist()) == {0, 1, 2}


def test_without_overlap_every_tile_is_a_database_patch():
    defense = _prepared()
    images = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    out = defense(images, torch.Generator().manual_seed(0))
    tiles = out.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * 16)
    database = defense._database.flatten(1)
    assert (tiles[:, None] - database[None]).abs().amax(dim=2).min(dim=1).values.max() < 1e-6


def test_quilting_moves_tiles_towards_clean_patches_when_database_is_the_image():
    clean = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    defense = Quilting(patch_size=4, overlap=0, neighbors=1, database_size=1, train_images=1)
    defense.set_database(clean.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 4, 4))
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    out = defense(noisy, torch.Generator().manual_seed(0))
    assert torch.allclose(out, clean)


def test_overlap_output_shape_range_and_seed(tmp_path):
    defense = _prepared(tmp_path, patch_size=5, overlap=2)
    images = torch.rand(4, 3, 11, 13, generator=torch.Generator().manual_seed(4))
    first = defense(images, torch.Generator().manual_seed(7))
    again = defense(images, torch.Generator().manual_seed(7))
    other = defense(images, torch.Generator().manual_seed(8))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert defense(images).shape == images.shape


def test_database_is_cached_and_reloaded(tmp_path):
    first = _prepared(tmp_path)
    assert len(list((tmp_path / "defenses").glob("quilting-*.pt"))) == 1
    second = _prepared(tmp_path)
    assert torch.equal(first._database, second._database)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_device():
    defense = _prepared()
    images = torch.rand(2, 3, 12, 12, device="cuda")
    out = defense(images, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == images.device and out.shape == images.shape


@pytest.mark.parametrize("kwargs, name", [
    ({"patch_size": 0}, "patch_size"), ({"overlap": 5}, "overlap"), ({"neighbors": 0}, "neighbors"),
    ({"database_size": 2}, "database_size"), ({"train_images": 0}, "train_images"),
])
def test_bad_parameters_name_themselves(kwargs, name):
    params = dict(patch_size=5, overlap=1, neighbors=3, database_size=100, train_images=10)
    params.update(kwargs)
    with pytest.raises(ValueError, match=name):
        Quilting(**params)


def test_no_training_set_and_unprepared_use_are_errors():
    with pytest.raises(ValueError, match="train_set"):
        Quilting().prepare(DefenseContext())
    with pytest.raises(ValueError, match="prepare"):
        Quilting()(torch.rand(1, 3, 8, 8))


def test_config_builds_the_defense():
    from defense_cli.config import compose_group_option
    from defense_cli.defenses import build_defense

    defense = build_defense(compose_group_option("defense", "quilting"))
    assert isinstance(defense, Quilting) and defense.randomized and defense.needs_train_set
