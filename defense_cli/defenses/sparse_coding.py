"""Convolutional sparse coding in the Fourier domain, batched in torch (CPU or CUDA).

The model of `004_bd3ac3fe115e93bb.txt` section 3.2, Problem (2): an image s with C channels is
represented by K coefficient maps z_k shared by the channels and a dictionary of K filters
d_{k,c} of size S x S: s_c ~ sum_k d_{k,c} (*) z_k, with an l1 penalty lambda sum_k ||z_k||_1.
Convolutions are circular (the caller pads the image); filters sit at the top-left corner of an
image-sized array, so their transforms are image-sized.

- `cbpdn`: the coding step with the dictionary fixed (section 3.3, "Convolutional Basis Pursuit
  DeNoising ... ADMM [3]"). ADMM splitting z = y as in Wohlberg, "Efficient convolutional sparse
  coding" (ICASSP 2014, the paper's [54]) for the multi-channel dictionary: the z-step solves
  (D^H D + rho I) z = D^H s + rho (y - u) at each frequency with the Woodbury identity (a C x C
  inverse per frequency, computed once per dictionary); the y-step is soft thresholding at
  lambda / rho; u is the scaled dual. The returned code is y (exactly sparse).
- `learn_dictionary`: the alternation of section 3.3 on clean images: code every training image
  with the current filters (cbpdn), then minimise the exact quadratic in the filters given those
  codes under the constraints "support S x S" and ||d_k||_2 <= 1, by FISTA (projected gradient with
  momentum) in the Fourier domain. The paper solves this step by ADMM following its [12]; FISTA is
  a documented substitution (same problem, no extra splitting variables to store).
- `tikhonov_split`: the usual preprocessing of convolutional sparse coding (SPORCO's
  `tikhonov_filter`): the smooth part l = argmin ||l - s||^2 + mu ||grad l||^2 is kept aside and
  only the detail s - l is sparse coded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from defense_cli.defenses.cpu_threads import map_in_cache_sized_chunks
from defense_cli.progress import progress

FFT_DIMS = (-2, -1)
#: Images coded at a time on the CPU (their K maps stay in the cache; measured best of 1, 2, 4, 8).
CPU_CODING_CHUNK = 2


@dataclass
class SpectralDictionary:
    """A dictionary (K, C, S, S) with its transform at one padded image size and its Woodbury factor."""

    filters: torch.Tensor
    spectrum: torch.Tensor      # (C, K, H, W//2+1) complex: D at each frequency
    adjoint: torch.Tensor       # its complex conjugate, materialised (a lazy conj view is slower)
    woodbury: torch.Tensor      # (C, C, H, W//2+1) complex: (rho I + D D^H)^-1 at each frequency
    size: tuple[int, int]
    rho: float


def filter_spectrum(filters: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """rfft2 of the filters (K, C, S, S) zero-padded to `size`, as (C, K, H, W//2+1)."""
    return torch.fft.rfft2(filters, s=size, dim=FFT_DIMS).transpose(0, 1).contiguous()


def spectral_dictionary(filters: torch.Tensor, size: tuple[int, int], rho: float) -> SpectralDictionary:
    """Precompute what every cbpdn z-step needs for `filters` at image `size`."""
    spectrum = filter_spectrum(filters, size)
    per_frequency = spectrum.permute(2, 3, 0, 1)                        # (H, Wf, C, K)
    gram = per_frequency @ per_frequency.conj().transpose(-1, -2)       # D D^H: (H, Wf, C, C)
    eye = torch.eye(spectrum.shape[0], dtype=gram.dtype, device=gram.device)
    woodbury = torch.linalg.inv(gram + rho * eye).permute(2, 3, 0, 1).contiguous()
    return SpectralDictionary(filters, spectrum, spectrum.conj().resolve_conj(), woodbury, size, rho)


def apply_dictionary(spectrum: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """D z per frequency: codes (N, K, H, Wf) -> (N, C, H, Wf).

    A loop over the C (<= 3) channels of broadcast products: several times faster on the CPU than
    `einsum` or a batched matmul, which both copy the operands into a frequency-major layout.
    """
    return torch.stack([(codes * channel).sum(1) for channel in spectrum], dim=1)


def apply_adjoint(conjugate: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """D^H s per frequency from conj(D) (C, K, H, Wf): signal (N, C, H, Wf) -> (N, K, H, Wf), channel by channel."""
    out = signal[:, 0, None] * conjugate[0]
    for channel in range(1, len(conjugate)):
        out.addcmul_(signal[:, channel, None], conjugate[channel])
    return out


def apply_woodbury(woodbury: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """W s per frequency for signal (N, C, H, Wf) (W is (C, C, H, Wf))."""
    return torch.stack([(row * signal).sum(1) for row in woodbury], dim=1)


def synthesize(dictionary: SpectralDictionary, codes: torch.Tensor) -> torch.Tensor:
    """sum_k d_{k,c} (*) z_k for codes (N, K, H, W) -> images (N, C, H, W)."""
    spectrum = apply_dictionary(dictionary.spectrum, torch.fft.rfft2(codes))
    return torch.fft.irfft2(spectrum, s=dictionary.size)


def cbpdn_objective(dictionary: SpectralDictionary, signal: torch.Tensor, codes: torch.Tensor,
                    lmbda: float) -> torch.Tensor:
    """Per-image 1/2 ||D z - s||^2 + lambda ||z||_1."""
    residual = synthesize(dictionary, codes) - signal
    return 0.5 * residual.pow(2).flatten(1).sum(1) + lmbda * codes.abs().flatten(1).sum(1)


def cbpdn(dictionary: SpectralDictionary, signal: torch.Tensor, lmbda: float, iterations: int) -> torch.Tensor:
    """Sparse codes (N, K, H, W) of signals (N, C, H, W) by `iterations` ADMM steps from zero.

    On the CPU the images are coded `CPU_CODING_CHUNK` at a time, chunks spread over threads
    (`map_in_cache_sized_chunks`): the K maps of a whole batch do not fit in the cache, and every
    step streams them several times (measured on the 2-core CPU, 48 x 48, K = 64, 50 steps:
    6.7 images/s in one call on 128 images, about 30 in chunks of 2 to 8, 35 with the threads).
    """
    return map_in_cache_sized_chunks(lambda part: _cbpdn_steps(dictionary, part, lmbda, iterations), signal,
                                     CPU_CODING_CHUNK)


def sparse_reconstruction(dictionary: SpectralDictionary, signal: torch.Tensor, lmbda: float,
                          iterations: int) -> torch.Tensor:
    """D z for the cbpdn codes z of each signal (N, C, H, W), chunked like `cbpdn`."""
    return map_in_cache_sized_chunks(
        lambda part: synthesize(dictionary, _cbpdn_steps(dictionary, part, lmbda, iterations)), signal,
        CPU_CODING_CHUNK)


def _cbpdn_steps(dictionary: SpectralDictionary, signal: torch.Tensor, lmbda: float, iterations: int) -> torch.Tensor:
    """The ADMM of `cbpdn` on one batch.

    With w = y - u, the z-step is z = (D^H D + rho I)^-1 (D^H s + rho w)
    = P D^H s + w - D^H W D w (Woodbury, W = (rho I + D D^H)^-1, P = (I - D^H W D) / rho): the first
    term, `base`, is computed once; each step transforms the K maps forward and back. The iterate is
    kept as (y, v) with v = z + u, so that u = v - y and w = 2 y - v: then v = base + y - D^H W D w,
    y = soft(v, lambda / rho). The first step (from y = u = 0) is v = base.
    """
    rho, size, spectrum, adjoint = dictionary.rho, dictionary.size, dictionary.spectrum, dictionary.adjoint

    def gram_correction(codes_spectrum: torch.Tensor) -> torch.Tensor:  # D^H W D z
        return apply_adjoint(adjoint, apply_woodbury(dictionary.woodbury, apply_dictionary(spectrum, codes_spectrum)))

    if iterations == 0:
        return torch.zeros(len(signal), spectrum.shape[1], *size, dtype=signal.dtype, device=signal.device)
    data_term = apply_adjoint(adjoint, torch.fft.rfft2(signal))           # D^H s
    base = torch.fft.irfft2((data_term - gram_correction(data_term)) / rho, s=size)
    threshold = lmbda / rho
    v = base
    y = F.softshrink(v, threshold)
    for _ in range(iterations - 1):
        w = torch.sub(y, v).add_(y)
        correction = torch.fft.irfft2(gram_correction(torch.fft.rfft2(w)), s=size)
        v = torch.add(base, y).sub_(correction)
        y = F.softshrink(v, threshold)
    return y


def project_filters(filters: torch.Tensor, filter_size: int) -> torch.Tensor:
    """Zero outside the top-left S x S support, then scale each filter into the unit l2 ball."""
    kept = filters[..., :filter_size, :filter_size]
    norms = kept.flatten(1).norm(dim=1).clamp_min(1.0)
    return kept / norms[:, None, None, None]


def normalise_filters(filters: torch.Tensor) -> torch.Tensor:
    """Each filter scaled to unit l2 norm (the initial dictionary)."""
    return filters / filters.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]


def update_filters(filters: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, size: tuple[int, int],
                   steps: int) -> torch.Tensor:
    """FISTA on 1/2 sum_n ||D z_n - s_n||^2 over the constrained filters, given its sufficient statistics.

    Per frequency, `gram = sum_n conj(Z_n) Z_n^T` (H, Wf, K, K) and `cross = sum_n conj(Z_n) S_n^T`
    (H, Wf, K, C); the gradient is irfft2(gram D^T - cross) (correlation theorem) and its Lipschitz
    constant the largest eigenvalue of gram over frequencies.
    """
    filter_size = filters.shape[-1]
    lipschitz = torch.linalg.eigvalsh(gram).amax().clamp_min(1e-12)
    current, momentum, t = filters, filters, 1.0
    for _ in range(steps):
        spectrum = filter_spectrum(momentum, size).permute(2, 3, 1, 0)     # (H, Wf, K, C): D^T
        gradient_spectrum = (gram @ spectrum - cross).permute(2, 3, 0, 1)  # (K, C, H, Wf)
        gradient = torch.fft.irfft2(gradient_spectrum, s=size)[..., :filter_size, :filter_size]
        following = project_filters(momentum - gradient / lipschitz, filter_size)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = following + ((t - 1) / t_next) * (following - current)
        current, t = following, t_next
    return current


def code_statistics(codes: torch.Tensor, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_n conj(Z_n) Z_n^T, sum_n conj(Z_n) S_n^T) per frequency for one batch."""
    z = torch.fft.rfft2(codes).permute(2, 3, 0, 1)          # (H, Wf, N, K)
    s = torch.fft.rfft2(signal).permute(2, 3, 0, 1)         # (H, Wf, N, C)
    zh = z.conj().transpose(-1, -2)                          # (H, Wf, K, N)
    return zh @ z, zh @ s


def learn_dictionary(signals: torch.Tensor, initial: torch.Tensor, lmbda: float, rho: float, outer_iterations: int,
                     coding_iterations: int, filter_steps: int, batch_size: int = 128) -> torch.Tensor:
    """Convolutional dictionary learning (section 3.3) on padded signals (N, C, H, W); returns (K, C, S, S)."""
    size = tuple(signals.shape[-2:])
    filters = normalise_filters(initial)
    for _ in progress(range(outer_iterations), outer_iterations, f"learn STL dictionary ({len(signals)} crops)",
                      "iteration"):
        dictionary = spectral_dictionary(filters, size, rho)
        gram = cross = 0
        for start in range(0, len(signals), batch_size):
            batch = signals[start:start + batch_size]
            codes = cbpdn(dictionary, batch, lmbda, coding_iterations)
            batch_gram, batch_cross = code_statistics(codes, batch)
            gram, cross = gram + batch_gram, cross + batch_cross
        filters = update_filters(filters, gram, cross, size, filter_steps)
    return filters


def tikhonov_split(images: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(smooth, detail) with smooth = argmin ||l - s||^2 + strength ||grad l||^2 (circular), detail = s - smooth."""
    height, width = images.shape[-2:]
    wy = torch.fft.fftfreq(height, device=images.device, dtype=images.dtype) * 2 * torch.pi
    wx = torch.fft.rfftfreq(width, device=images.device, dtype=images.dtype) * 2 * torch.pi
    gradient_power = (2 - 2 * torch.cos(wy))[:, None] + (2 - 2 * torch.cos(wx))[None, :]
    smooth = torch.fft.irfft2(torch.fft.rfft2(images) / (1 + strength * gradient_power), s=(height, width))
    return smooth, images - smooth
