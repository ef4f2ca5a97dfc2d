"""Known answers on small cases: FGSM's closed form, eps = 0, APGD's checkpoints and losses, SPSA's
gradient estimate, exact gradient/query counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defense_cli.attacks.apgd import APGD, APGDTargeted, checkpoints, dlr_loss, targeted_dlr_loss
from defense_cli.attacks.foolbox_attacks import FGSM, PGD
from defense_cli.attacks.spsa import SPSA, margin_loss, spsa_gradient


def linear_two_class(dim: int) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(dim, 2)).eval()


def test_fgsm_on_a_linear_model_is_eps_times_the_sign_of_the_weight_difference():
    model = linear_two_class(3 * 4 * 4)
    images = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    images[0, 0, 0] = torch.tensor([0.0, 1.0, 0.01, 0.99])     # pixels at and near the bounds: clipping
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    eps = 0.05
    weight = model[1].weight.detach()
    towards_other = (weight[1 - labels] - weight[labels]).sign().view_as(images)
    expected = (images + eps * towards_other).clamp(0, 1)
    adversarial = FGSM(eps=eps)(model, images, labels).adversarial
    torch.testing.assert_close(adversarial, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attack", [PGD(eps=0.0, steps=5, random_start=True), PGD(eps=0.0, norm="l2"),
                                    APGD(eps=0.0, steps=5), SPSA(eps=0.0, steps=2, samples=4)],
                         ids=["pgd-linf", "pgd-l2", "apgd", "spsa"])
def test_eps_zero_returns_the_input(attack):
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).eval()
    images = torch.rand(4, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(attack(model, images, labels).adversarial, images, atol=0, rtol=0)


def test_apgd_checkpoints_follow_the_papers_schedule():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j * N).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


def test_dlr_losses_known_values():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 4.0, 1.0, 2.0]])
    labels = torch.tensor([0, 0])
    # row 0: -(3 - 2) / (3 - 1); row 1: -(0 - 4) / (4 - 1)
    torch.testing.assert_close(dlr_loss(logits, labels), torch.tensor([-0.5, 4 / 3]))
    targeted = targeted_dlr_loss(torch.tensor([1, 3]))
    # row 0: -(3 - 1) / (3 - (1 + 0) / 2); row 1: -(0 - 2) / (4 - (1 + 0) / 2)
    torch.testing.assert_close(targeted(logits, labels), torch.tensor([-0.8, 2 / 3.5]))


def test_margin_loss_is_true_logit_minus_best_other():
    logits = torch.tensor([[1.0, 5.0, 2.0], [4.0, 0.5, 3.0]])
    torch.testing.assert_close(margin_loss(logits, torch.tensor([2, 0])), torch.tensor([-3.0, 1.0]))


def test_spsa_gradient_estimate_correlates_with_the_true_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    images = torch.rand(3, 3, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])

    def loss_fn(x):
        return margin_loss(model(x), labels.repeat(x.shape[0] // 3))

    inputs = images.clone().requires_grad_(True)
    true, = torch.autograd.grad(loss_fn(inputs).sum(), inputs)
    estimate = spsa_gradient(loss_fn, images, delta=1e-3, samples=4000, chunk=500,
                             generator=torch.Generator().manual_seed(1))
    cosine = nn.functional.cosine_similarity(estimate.flatten(1), true.flatten(1), dim=1)
    assert cosine.min() > 0.9, cosine
    few = spsa_gradient(loss_fn, images, 1e-3, 4, 4, torch.Generator().manual_seed(1))
    few_cosine = nn.functional.cosine_similarity(few.flatten(1), true.flatten(1), dim=1)
    assert few_cosine.mean() < cosine.mean()     # more samples, better estimate


def test_pgd_and_apgd_count_one_gradient_per_image_and_step():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).eval()
    images, labels = torch.rand(5, 3, 4, 4), torch.zeros(5, dtype=torch.long)
    assert PGD(eps=0.01, steps=4)(model, images, labels).gradient_evaluations == 5 * 4
    # APGD: one gradient at the start, one per step; restarts only on images not yet fooled.
    assert APGD(eps=0.0, steps=4)(model, images, labels).gradient_evaluations == 5 * (4 + 1)


def test_spsa_only_queries():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).eval()
    images = torch.rand(2, 3, 4, 4)
    labels = model(images).argmax(1)           # both correct: neither stops early
    result = SPSA(eps=0.0, steps=1, samples=4, samples_per_query=4)(model, images, labels)
    assert result.gradient_evaluations == 0
    assert result.queries == 2 + 2 * 4 * 2     # one check of the batch, then 2 queries per sample


def test_apgd_t_refuses_models_with_fewer_than_four_classes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()
    with pytest.raises(ValueError, match="4 classes"):
        APGDTargeted(eps=0.01, steps=2)(model, torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))


def test_apgd_checkpoint_halves_the_step_and_returns_to_the_best_point_only_where_stalled():
    from defense_cli.attacks.apgd import _SearchState

    start = torch.zeros(2, 1, 1, 2)
    state = _SearchState(start, torch.tensor([0.0, 0.0]), torch.ones(2, 1, 1, 2),
                         torch.tensor([False, False]), step=0.4)
    rising = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 2.0]]]])
    state.record(rising, torch.tensor([1.0, 1.0]), torch.ones(2, 1, 1, 2), torch.tensor([False, False]))
    # image 0 keeps rising, image 1 falls below its best: 1 of 2 steps rose, < 0.75 * 2
    falling = torch.tensor([[[[3.0, 3.0]]], [[[5.0, 5.0]]]])
    state.record(falling, torch.tensor([2.0, 0.5]), torch.ones(2, 1, 1, 2), torch.tensor([False, False]))
    x = state.checkpoint(falling, k=2, rho=0.75)
    torch.testing.assert_close(state.step.flatten(), torch.tensor([0.4, 0.2]))
    torch.testing.assert_close(x, torch.stack([falling[0], rising[1]]))
    # condition 2: not reduced last time and no new best since -> halve now, though the loss rose
    state.record(falling, torch.tensor([2.0, 0.5]), torch.ones(2, 1, 1, 2), torch.tensor([False, False]))
    state.checkpoint(falling, k=3, rho=0.0)
    torch.testing.assert_close(state.step.flatten(), torch.tensor([0.2, 0.2]))
    torch.testing.assert_close(state.result(), torch.stack([falling[0], rising[1]]))


def test_foolbox_attacks_leave_the_models_parameters_untouched():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    model[1].weight.requires_grad_(False)                       # a frozen parameter stays frozen
    images, labels = torch.rand(3, 3, 4, 4), torch.zeros(3, dtype=torch.long)
    PGD(eps=0.03, steps=2)(model, images, labels)
    assert model[1].weight.grad is None and model[1].bias.grad is None     # no weight gradients computed
    assert model[1].bias.requires_grad and not model[1].weight.requires_grad
