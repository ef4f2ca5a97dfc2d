"""Convolutional sparse coding (STL's ADMM): exact sparse signals, noise reduction, objective, learning."""

import torch

from defense_cli.defenses.sparse_coding import (
    cbpdn, cbpdn_objective, code_statistics, learn_dictionary, normalise_filters, project_filters,
    sparse_reconstruction, spectral_dictionary, synthesize, tikhonov_split, update_filters)

SIZE = (24, 24)


def _sparse_signal(filters, n=2, density=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, filters.shape[0], *SIZE)
    mask = torch.rand(codes.shape, generator=g) < density
    codes[mask] = torch.randn(int(mask.sum()), generator=g).sign() * (1 + torch.rand(int(mask.sum()), generator=g))
    return codes


def _filters(k=4, c=3, s=5, seed=0):
    return normalise_filters(torch.randn(k, c, s, s, generator=torch.Generator().manual_seed(seed)))


def test_synthesis_is_the_circular_convolution_sum():
    filters = _filters(k=2, c=1, s=3)
    codes = torch.zeros(1, 2, *SIZE)
    codes[0, 0, 5, 7] = 2.0
    codes[0, 1, 10, 3] = -1.0
    out = synthesize(spectral_dictionary(filters, SIZE, 1.0), codes)
    expected = torch.zeros(1, 1, *SIZE)
    expected[0, 0, 5:8, 7:10] += 2 * filters[0, 0]
    expected[0, 0, 10:13, 3:6] -= filters[1, 0]
    assert torch.allclose(out, expected, atol=1e-5)


def test_sparse_combination_of_filters_is_reconstructed_almost_exactly():
    filters = _filters()
    dictionary = spectral_dictionary(filters, SIZE, 50 * 0.001 + 1)
    signal = synthesize(dictionary, _sparse_signal(filters))
    codes = cbpdn(dictionary, signal, 0.001, 200)
    error = (synthesize(dictionary, codes) - signal).norm() / signal.norm()
    assert error < 0.01


def test_noise_outside_the_dictionary_span_is_reduced():
    filters = _filters(k=2, c=3, s=6)
    dictionary = spectral_dictionary(filters, SIZE, 50 * 0.1 + 1)
    clean = synthesize(dictionary, _sparse_signal(filters, density=0.005, seed=1))
    noise = 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    projected = synthesize(dictionary, cbpdn(dictionary, clean + noise, 0.1, 100))
    assert (projected - clean).norm() < 0.5 * noise.norm()


def test_admm_objective_decreases_with_iterations():
    filters = _filters()
    lmbda = 0.05
    dictionary = spectral_dictionary(filters, SIZE, 50 * lmbda + 1)
    signal = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    objectives = [cbpdn_objective(dictionary, signal, cbpdn(dictionary, signal, lmbda, it), lmbda).sum().item()
                  for it in (0, 2, 10, 50)]
    assert objectives == sorted(objectives, reverse=True)
    assert objectives[-1] < 0.7 * objectives[0]


def test_projection_keeps_support_and_unit_ball():
    filters = torch.randn(3, 2, 6, 6) * 5
    projected = project_filters(filters, 4)
    assert projected.shape == (3, 2, 4, 4)
    assert torch.allclose(projected.flatten(1).norm(dim=1), torch.ones(3), atol=1e-5)
    small = torch.full((1, 1, 2, 2), 0.1)
    assert torch.equal(project_filters(small, 2), small)


def test_filter_update_decreases_the_fit_given_codes():
    true_filters = _filters(k=3, c=1, s=4, seed=5)
    codes = _sparse_signal(true_filters, n=6, density=0.02, seed=6)
    signal = synthesize(spectral_dictionary(true_filters, SIZE, 1.0), codes)
    start = _filters(k=3, c=1, s=4, seed=7)
    gram, cross = code_statistics(codes, signal)
    updated = update_filters(start, gram, cross, SIZE, 50)

    def misfit(filters):
        return (synthesize(spectral_dictionary(filters, SIZE, 1.0), codes) - signal).norm()

    assert misfit(updated) < 0.1 * misfit(start)
    assert (updated.flatten(1).norm(dim=1) <= 1 + 1e-5).all()


def test_dictionary_learning_lowers_the_sparse_coding_objective():
    true_filters = _filters(k=3, c=1, s=4, seed=8)
    signal = synthesize(spectral_dictionary(true_filters, SIZE, 1.0), _sparse_signal(true_filters, n=8, seed=9))
    initial = _filters(k=3, c=1, s=4, seed=10)
    lmbda, rho = 0.01, 1.5

    def objective(filters):
        dictionary = spectral_dictionary(filters, SIZE, rho)
        return cbpdn_objective(dictionary, signal, cbpdn(dictionary, signal, lmbda, 50), lmbda).sum()

    learned = learn_dictionary(signal, initial, lmbda, rho, outer_iterations=5, coding_iterations=20,
                               filter_steps=10, batch_size=4)
    assert learned.shape == initial.shape
    assert objective(learned) < 0.9 * objective(initial)


def test_tikhonov_split_sums_to_the_image_and_smooths():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    smooth, detail = tikhonov_split(images, 5.0)
    assert torch.allclose(smooth + detail, images, atol=1e-6)
    assert smooth.diff(dim=-1).abs().mean() < 0.5 * images.diff(dim=-1).abs().mean()
    assert torch.allclose(smooth.mean(dim=(-2, -1)), images.mean(dim=(-2, -1)), atol=1e-5)


def _textbook_admm(dictionary, signal, lmbda, iterations):
    """Wohlberg's ADMM for CBPDN with the z-step solved densely per frequency (no Woodbury, no reuse)."""
    d = dictionary.spectrum.permute(2, 3, 0, 1)                       # (H, Wf, C, K)
    k = d.shape[-1]
    system = d.conj().transpose(-1, -2) @ d + dictionary.rho * torch.eye(k, dtype=d.dtype)
    data = d.conj().transpose(-1, -2) @ torch.fft.rfft2(signal).permute(2, 3, 1, 0)   # (H, Wf, K, N)
    y = u = torch.zeros(len(signal), k, *dictionary.size)
    for _ in range(iterations):
        rhs = data + dictionary.rho * torch.fft.rfft2(y - u).permute(2, 3, 1, 0)
        z = torch.fft.irfft2(torch.linalg.solve(system, rhs).permute(3, 2, 0, 1), s=dictionary.size)
        y = torch.nn.functional.softshrink(z + u, lmbda / dictionary.rho)
        u = u + z - y
    return y


def test_admm_matches_the_textbook_iteration():
    filters = _filters(k=6)
    dictionary = spectral_dictionary(filters, SIZE, 3.0)
    signal = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    for iterations in (1, 7):
        expected = _textbook_admm(dictionary, signal, 0.05, iterations)
        assert torch.allclose(cbpdn(dictionary, signal, 0.05, iterations), expected, atol=1e-5)
    assert cbpdn(dictionary, signal, 0.05, 0).abs().max() == 0


def test_codes_do_not_depend_on_the_batch_they_are_solved_in():
    dictionary = spectral_dictionary(_filters(), SIZE, 3.0)
    signal = torch.rand(9, 3, *SIZE, generator=torch.Generator().manual_seed(5))  # chunks spread over threads
    together = cbpdn(dictionary, signal, 0.05, 10)
    alone = torch.cat([cbpdn(dictionary, one[None], 0.05, 10) for one in signal])
    assert torch.allclose(together, alone, atol=1e-6)
    reconstruction = sparse_reconstruction(dictionary, signal, 0.05, 10)
    assert torch.allclose(reconstruction, synthesize(dictionary, together), atol=1e-6)
