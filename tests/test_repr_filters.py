"""RePr filter surgery: conv/BN discovery, orthogonal re-initialisation, BN and optimiser resets."""

import torch
from torch import nn

from defense_cli.models.architectures import resnet18, small_cnn
from defense_cli.models.vanilla import convnet
from defense_cli.training.filters import (conv_units, null_space_basis, orthogonal_complement_rows,
                                          reinitialize_filters, zero_filters)


def test_conv_units_pair_each_conv_with_its_batchnorm():
    units = conv_units(small_cnn(3, 10, width=8))
    assert [u.num_filters for u in units] == [8, 16, 32]
    assert all(u.bn is not None and u.bn.num_features == u.num_filters for u in units)
    assert all(u.bn is None for u in conv_units(convnet(3, 10, depth=2, width=4)))
    resnet_units = conv_units(resnet18(3, 10))
    assert len(resnet_units) == 20  # stem + 16 block convs + 3 downsample convs
    assert all(u.bn is not None and u.bn.num_features == u.num_filters for u in resnet_units)


def test_null_space_basis_is_orthogonal_to_rows():
    rows = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    basis = null_space_basis(rows)
    assert basis.shape == (7, 4)
    assert torch.allclose(rows @ basis, torch.zeros(3, 4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(basis.T @ basis, torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_reinitialized_filters_are_orthogonal_to_kept_and_to_each_other():
    conv = nn.Conv2d(2, 6, 3)  # rows of 18 values: room for all 6
    unit = conv_units(nn.Sequential(conv))[0]
    dropped = torch.tensor([1, 4, 5])
    kept = torch.tensor([0, 2, 3])
    before_kept = conv.weight[kept].clone()
    reinitialize_filters(unit, dropped, torch.Generator().manual_seed(0))
    w = unit.matrix().detach().double()
    assert torch.equal(conv.weight[kept], before_kept)
    assert (w[dropped] @ w[kept].T).abs().max() < 1e-6
    gram = w[dropped] @ w[dropped].T
    assert (gram - torch.diag(torch.diagonal(gram))).abs().max() < 1e-6
    mean_kept_norm = w[kept].norm(dim=1).mean()
    assert torch.allclose(w[dropped].norm(dim=1), mean_kept_norm.expand(3), rtol=1e-5)
    assert torch.equal(conv.bias[dropped], torch.zeros(3))


def test_rows_beyond_the_null_space_are_random_unit_vectors():
    kept = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows = orthogonal_complement_rows(kept, 3, torch.Generator().manual_seed(0))
    assert rows.shape == (3, 4)
    assert (rows[0] @ kept.T).abs().max() < 1e-10  # the one null-space direction
    assert torch.allclose(rows.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_batchnorm_of_reinitialized_filters_is_reset_and_others_kept():
    model = small_cnn(1, 10, width=4)
    unit = conv_units(model)[0]
    with torch.no_grad():
        unit.bn.weight.fill_(2.0)
        unit.bn.bias.fill_(-1.0)
        unit.bn.running_mean.fill_(0.5)
        unit.bn.running_var.fill_(4.0)
    reinitialize_filters(unit, torch.tensor([0, 2]), torch.Generator().manual_seed(0))
    assert unit.bn.weight.tolist() == [1.0, 2.0, 1.0, 2.0]
    assert unit.bn.bias.tolist() == [0.0, -1.0, 0.0, -1.0]
    assert unit.bn.running_mean.tolist() == [0.0, 0.5, 0.0, 0.5]
    assert unit.bn.running_var.tolist() == [1.0, 4.0, 1.0, 4.0]


def _train_steps(model, optimizer, unit, dropped, steps=5):
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        images = torch.rand(8, 1, 8, 8, generator=generator)
        labels = torch.randint(0, 10, (8,), generator=generator)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        zero_filters(unit, dropped, optimizer)


def test_dropped_filters_stay_zero_through_momentum_and_weight_decay():
    torch.manual_seed(0)
    model = small_cnn(1, 10, width=4)
    unit = conv_units(model)[1]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    _train_steps(model, optimizer, unit, torch.tensor([], dtype=torch.long), steps=3)  # momentum builds up
    dropped = torch.tensor([1, 6])
    zero_filters(unit, dropped, optimizer)
    before = unit.conv.weight.detach().clone()
    _train_steps(model, optimizer, unit, dropped)
    for param in unit.parameters():
        assert torch.equal(param[dropped], torch.zeros_like(param[dropped]))
        assert torch.equal(optimizer.state[param]["momentum_buffer"][dropped],
                           torch.zeros_like(param[dropped]))
    kept = torch.tensor([0, 2, 3, 4, 5, 7])
    assert not torch.equal(unit.conv.weight[kept], before[kept])  # the rest still trains
    features = model.features[:2](torch.rand(2, 1, 8, 8))
    assert torch.equal(features[:, dropped], torch.zeros_like(features[:, dropped]))


def test_reinitialization_resets_adam_moments_of_the_filters():
    torch.manual_seed(0)
    model = small_cnn(1, 10, width=4)
    unit = conv_units(model)[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train_steps(model, optimizer, unit, torch.tensor([], dtype=torch.long), steps=2)
    reinitialize_filters(unit, torch.tensor([3]), torch.Generator().manual_seed(0), optimizer)
    state = optimizer.state[unit.conv.weight]
    assert torch.equal(state["exp_avg"][3], torch.zeros_like(state["exp_avg"][3]))
    assert torch.equal(state["exp_avg_sq"][3], torch.zeros_like(state["exp_avg_sq"][3]))
    assert state["exp_avg"][0].abs().sum() > 0
