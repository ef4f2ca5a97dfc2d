"""SRF and SPLIC: random-anchor image completion by progressive smoothed rank functions.

SPLIC: `000_1720f31fb7e6036a.txt` ch. 4 (section 4.3, eq. 4.3-4.10, Algorithm 4) and
`001_8192944065db7cae.txt` (section 3, Algorithm 1). SRF: the same without the TV term, the
ablation baseline of `001_...` section 3.9.5 / Table 4. The math lives in `smoothed_rank`.

Choices where the papers are silent (all config values):
- `channel_mode: concat` (default): the three channels side by side as one 32 x 96 matrix, as
  ME-Net does ("jointly by concatenating them into one matrix"), so the low-rank model also uses
  the correlation between R, G and B; the TV term stays inside each channel block and the anchor
  mask selects *pixels* (shared by the three channels), as in "randomly select 50% of pixels as
  anchor points". Measured on 512 CIFAR-10 (JPEG copy) test images (2-core CPU): concat gives
  PSNR 23.75 dB / SSIM 0.784 at 141 images/s, `separate` (each channel its own matrix, delta
  from its own largest singular value, the literal reading of Algorithm 4 for one m x n matrix)
  23.62 dB / 0.777 at 76 images/s.
- `anchor_fraction: 0.5` exactly (a random permutation per image), not a Bernoulli draw.
- `rank: 8` = R/4 for 32 x 32 images (`001_...` section 3.7); `maxiter: 56` = 8 rounds of the
  7 inner iterations (the papers give no number); `tolerance: 1e-6` (epsilon, in [0, 1] pixel
  units; not given in the papers, rarely reached on CIFAR-10 within 56 iterations).
- `srf_step: delta2` multiplies the eq. 4.9 gradient by delta^2 (the normalisation of the SRF/SL0
  algorithms the chapter builds on, ref. [110]): with the gradient as printed, the step on a
  singular value below delta is mu/delta^2, which exceeds the stability bound 2 of gradient
  descent on F_delta (curvature 1/delta^2 at 0) once delta < 0.5 in [0, 1] pixel units, so the
  iterates oscillate and eq. 4.5 jumps up (by 2.6 on skimage's chelsea at 32 x 32, see
  tests/test_completion_smoothed_rank.py); with delta^2 the update is scale-free and stable, and
  PSNR on CIFAR-10 rises from 21.7 to 23.4 dB (SPLIC) and from 15.0 to 21.5 dB (SRF).
  `plain` is the literal reading (scale-dependent: in [0, 255] units it is stable but the SRF
  term then hardly acts, PSNR 16.7 / 10.6 dB).
- `tv_gradient: exact`: see `smoothed_rank` (eq. 4.10 as printed omits the backward differences).
- `alternate: true`: the second pass of section 4.3.4 (anchors and targets swapped).
- `surrogate_iterations: 3`: the BPDA surrogate (`surrogate`, `threat_model.bpda=surrogate`)
  unrolls 3 iterations of Algorithm 4 per pass from the real completion (docs/attacks.md).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Callable

import torch

from defense_cli.defenses.base import Defense
from defense_cli.defenses.image_matrices import CHANNEL_MODES, to_images, to_matrices
from defense_cli.parameter_checks import check_choice, check_int, check_real
from defense_cli.defenses.random_masks import exact_fraction_mask, generator_for
from defense_cli.defenses.smoothed_rank import (TV_GRADIENTS, CompletionSettings, alternated_complete, complete,
                                                    unrolled_complete)

SRF_STEPS = ("delta2", "plain")


class SRF(Defense):
    """Progressive smoothed-rank completion of 50% random target pixels (SPLIC without TV).

    `001_8192944065db7cae.txt` section 3.9.5 and Table 4 ("SRF which is the SPLIC method without
    TV constraint"): Algorithm 4 of `000_1720f31fb7e6036a.txt` ch. 4 with lambda = 0.
    """

    randomized = True

    def __init__(self, anchor_fraction: float = 0.5, rank: int = 8, step: float = 0.5, shrink: float = 0.45,
                 inner_iterations: int = 7, tolerance: float = 1e-6, max_iterations: int = 56,
                 channel_mode: str = "concat", alternate: bool = True, srf_step: str = "delta2",
                 surrogate_iterations: int = 3) -> None:
        self.anchor_fraction = check_real("anchor_fraction", anchor_fraction, 0.0, 1.0, low_open=True, high_open=True)
        self.rank = check_int("rank", rank, 1)
        self.step = check_real("step", step, 0.0, float("inf"), low_open=True, high_open=True)
        self.shrink = check_real("shrink", shrink, 0.0, 1.0, low_open=True, high_open=True)
        self.inner_iterations = check_int("inner_iterations", inner_iterations, 1)
        self.tolerance = check_real("tolerance", tolerance, 0.0, float("inf"), high_open=True)
        self.max_iterations = check_int("max_iterations", max_iterations, 1)
        self.channel_mode = check_choice("channel_mode", channel_mode, CHANNEL_MODES)
        self.alternate = check_choice("alternate", alternate, (True, False))
        self.srf_step = check_choice("srf_step", srf_step, SRF_STEPS)
        self.surrogate_iterations = check_int("surrogate_iterations", surrogate_iterations, 1)

    def settings(self) -> CompletionSettings:
        return CompletionSettings(rank=self.rank, step=self.step, tv_weight=0.0, shrink=self.shrink,
                                  inner_iterations=self.inner_iterations, tolerance=self.tolerance,
                                  max_iterations=self.max_iterations, srf_step=self.srf_step)

    def sample_anchors(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Anchor pixels (B, 1, H, W), exactly `anchor_fraction` of each image, shared by its channels."""
        batch, _, height, width = images.shape
        return exact_fraction_mask((batch, 1, height, width), self.anchor_fraction,
                                   generator_for(images, generator), images.device)

    def _on_matrices(self, images: torch.Tensor, anchors: torch.Tensor, run: Callable[..., torch.Tensor]) -> torch.Tensor:
        """`run(matrices, anchor_matrices, settings, block)` in matrix form, back to images in [0, 1]."""
        matrices = to_matrices(images, self.channel_mode)
        anchor_matrices = to_matrices(anchors.expand_as(images), self.channel_mode)
        completed = run(matrices, anchor_matrices, self.settings(), images.shape[-1])
        return to_images(completed, self.channel_mode, images.shape[1]).clamp(0, 1)

    def complete(self, images: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Deterministic part: complete (and, with `alternate`, re-complete) given the anchor mask."""
        return self._on_matrices(images, anchors, alternated_complete if self.alternate else complete)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.complete(images, self.sample_anchors(images, generator))

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """`surrogate_iterations` unrolled iterations of Algorithm 4 per pass, on the forward's anchors.

        The BPDA surrogate g of Athalye et al. 2018 (section 4.1) for Algorithm 4 of
        `000_1720f31fb7e6036a.txt` ch. 4 (lines 4-9: the eq. 4.9 / 4.10 step and the anchor
        projection), both passes of section 4.3.4.

        Each pass of the real completion runs first (no gradient); `smoothed_rank.refine` then
        repeats lines 4-9 of Algorithm 4 from its output at the last round's delta, differentiated
        by autograd (SVD through the Gram eigh). Anchors are drawn as in `transform`, so under BPDA
        (which replays the generator) they are the forward's.
        """
        run = partial(unrolled_complete, iterations=self.surrogate_iterations, alternate=self.alternate)
        return self._on_matrices(images, self.sample_anchors(images, generator), run)


class SPLIC(SRF):
    """Structure-preserving progressive low-rank image completion (SPLIC).

    `000_1720f31fb7e6036a.txt` ch. 4, Algorithm 4 (`001_8192944065db7cae.txt` Algorithm 1):
    minimise F_delta(X) + lambda C(X) (eq. 4.5) subject to the anchors, by gradient steps (eq. 4.9,
    4.10) with mu = 0.5, lambda = 0.02, a rank cap r, delta = sigma_1(X (.) M) shrunk by rho = 0.45
    after every 7 iterations, then the alternated pass of section 4.3.4.
    """

    def __init__(self, anchor_fraction: float = 0.5, rank: int = 8, step: float = 0.5, tv_weight: float = 0.02,
                 shrink: float = 0.45, inner_iterations: int = 7, tolerance: float = 1e-6, max_iterations: int = 56,
                 channel_mode: str = "concat", alternate: bool = True, srf_step: str = "delta2",
                 tv_gradient: str = "exact", surrogate_iterations: int = 3) -> None:
        super().__init__(anchor_fraction, rank, step, shrink, inner_iterations, tolerance, max_iterations,
                         channel_mode, alternate, srf_step, surrogate_iterations)
        self.tv_weight = check_real("tv_weight", tv_weight, 0.0, float("inf"), high_open=True)
        self.tv_gradient = check_choice("tv_gradient", tv_gradient, TV_GRADIENTS)

    def settings(self) -> CompletionSettings:
        return replace(super().settings(), tv_weight=self.tv_weight, tv_gradient=self.tv_gradient)
