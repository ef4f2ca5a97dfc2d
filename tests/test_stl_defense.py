"""STL defense: fitting (plain and stratified), caching, projection, shape/range/device, validation."""

import pytest
import torch

from defense_cli.data import ImageSet
from defense_cli.defenses import DefenseContext
from defense_cli.defenses.stl import STL
from defense_cli.defenses.stratify import kmeans, knn_vote

TINY = dict(filters=4, filter_size=4, iterations=20, train_images=24, learn_patches=16, learn_patch_size=10,
            learning_iterations=2, learning_coding_iterations=5, filter_steps=3, latent_dim=8, dae_epochs=2)


def _train_set(n=24, channels=3, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 3, size // 3, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return ImageSet((images * 255).round().to(torch.uint8), torch.zeros(n, dtype=torch.long))


def _stl(tmp_path=None, **kwargs):
    defense = STL(**{**TINY, **kwargs})
    defense.prepare(DefenseContext(train_set=_train_set(), cache_dir=tmp_path))
    return defense


def test_projection_output_shape_range_and_determinism(tmp_path):
    defense = _stl(tmp_path)
    images = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    out = defense(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, defense(images))
    assert not defense.randomized


def test_projection_of_clean_images_is_close_and_removes_part_of_the_noise():
    defense = _stl(lmbda=0.02, iterations=60)
    clean = _train_set(n=4, seed=3).float_images()
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    assert (defense(clean) - clean).pow(2).mean() < 0.2 * (noisy - clean).pow(2).mean()
    assert (defense(noisy) - clean).pow(2).mean() < (noisy - clean).pow(2).mean()


def test_fitted_dictionary_is_cached_and_reloaded(tmp_path):
    first = _stl(tmp_path)
    assert len(list((tmp_path / "defenses").glob("stl-*.pt"))) == 1
    second = _stl(tmp_path)
    assert torch.equal(first._dictionaries, second._dictionaries)
    other = _stl(tmp_path, lmbda=0.3)
    assert len(list((tmp_path / "defenses").glob("stl-*.pt"))) == 2
    assert not torch.equal(first._dictionaries, other._dictionaries)


def test_stratified_version_uses_one_dictionary_per_cluster(tmp_path):
    defense = _stl(tmp_path, clusters=2, neighbors=3)
    assert defense._dictionaries.shape == (2, 4, 3, 4, 4)
    images = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    assignment = defense.assign_clusters(images)
    assert assignment.shape == (5,) and set(assignment.tolist()) <= {0, 1}
    out = defense(images)
    assert out.shape == images.shape and torch.equal(out, defense(images))
    for cluster in assignment.unique().tolist():
        members = assignment == cluster
        single = STL(**{**TINY, "clusters": 1})
        single.set_dictionaries(defense._dictionaries[cluster:cluster + 1])
        assert torch.allclose(out[members], single(images[members]), atol=1e-5)


def test_kmeans_separates_two_blobs_and_knn_votes_for_the_nearest():
    g = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(20, 2, generator=g) * 0.1, torch.randn(20, 2, generator=g) * 0.1 + 5])
    labels = kmeans(points, 2, 10, torch.Generator().manual_seed(1))
    assert len(set(labels[:20].tolist())) == 1 and len(set(labels[20:].tolist())) == 1
    assert labels[0] != labels[20]
    votes = knn_vote(torch.tensor([[0.0, 0.0], [5.0, 5.0]]), points, labels, 5, 2)
    assert votes.tolist() == [labels[0].item(), labels[20].item()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_output_stays_on_device():
    defense = _stl()
    images = torch.rand(2, 3, 12, 12, device="cuda")
    assert defense(images).device == images.device


@pytest.mark.parametrize("kwargs, name", [
    ({"filters": 0}, "filters"), ({"filter_size": 0}, "filter_size"), ({"lmbda": 0.0}, "lmbda"),
    ({"rho": -1.0}, "rho"), ({"iterations": 0}, "iterations"), ({"lowpass": -1.0}, "lowpass"),
    ({"clusters": 0}, "clusters"), ({"neighbors": 0}, "neighbors"), ({"learn_patch_size": 4}, "learn_patch_size"),
    ({"train_images": 1, "clusters": 2}, "train_images"), ({"dae_noise": -0.1}, "dae_noise"),
])
def test_bad_parameters_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        STL(**{**TINY, **kwargs})


def test_unfitted_or_no_training_set_is_an_error():
    with pytest.raises(ValueError, match="no fitted dictionary"):
        STL()(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="train_set"):
        STL().prepare(DefenseContext())
    with pytest.raises(ValueError, match="dictionaries"):
        STL(**TINY).set_dictionaries(torch.zeros(1, 5, 3, 4, 4))


def test_configs_build_plain_and_stratified_stl():
    from defense_cli.config import compose_group_option
    from defense_cli.defenses import build_defense

    plain = build_defense(compose_group_option("defense", "stl"))
    stratified = build_defense(compose_group_option("defense", "stl_stratified"))
    assert isinstance(plain, STL) and plain.clusters == 1 and plain.needs_train_set
    assert stratified.clusters == 4 and (stratified.filters, stratified.filter_size, stratified.lmbda) == (64, 8, 0.2)
