"""ME-Net: random pixel masking followed by matrix estimation (Yang et al. 2019).

`003_b8a380e28ee315f5.txt` section 2 (2.2: eq. 1-2; 2.3: training on n masks, testing with the
mean p) and section 3.5 (USVT, Soft-Impute, nuclear norm). Follows the authors' released code
where the paper is silent (documented choices, all config values):
- pixels are scaled to [-1, 1] before estimation, the estimate clipped to [-1, 1] and scaled back;
- `channel_mode: concat` (the paper's choice) estimates one H x 3W matrix with an independent
  Bernoulli(p) draw per entry; `separate` estimates each channel with one H x W pixel mask shared
  by the channels (as the code does);
- `method: nuclear` (the paper's default, "unless otherwise specified"): penalised eq. 1,
  mu ||X||_* + ||P(X - A)||_F^2 with `nuclear_weight` mu = 1 (the code's default), solved by
  FISTA with singular value thresholding (`matrix_estimation.nuclear_norm`), not a generic solver;
- `usvt` keeps int(`usvt_fraction` * min(m, n)) singular values (svdprob = 0.8) and divides by the
  observed fraction; `softimpute` uses fancyimpute's defaults (shrinkage sigma_1 / 50,
  convergence 0.001, 100 iterations);
- training masks: p_i = linspace(p_start, p_end, n) (ME-Net trains on n = 10 masks with
  p in [0.8, 1]); at test time p = mean(p_i) = (p_start + p_end) / 2, the paper's rule;
- `surrogate_iterations: 3`: the BPDA surrogate (`threat_model.bpda=surrogate`) unrolls 3
  iterations of Soft-Impute / of the nuclear-norm proximal step from the real estimate.
"""

from __future__ import annotations

import torch

from defense_cli.defenses.base import Defense, check_images
from defense_cli.defenses.image_matrices import CHANNEL_MODES, to_images, to_matrices
from defense_cli.defenses.matrix_estimation import (nuclear_norm, soft_impute, soft_impute_threshold,
                                                     unrolled_estimate, usvt)
from defense_cli.parameter_checks import check_choice, check_int, check_probability, check_real
from defense_cli.defenses.random_masks import bernoulli_mask, generator_for

METHODS = ("usvt", "softimpute", "nuclear")


class MENet(Defense):
    """Mask each pixel with keep probability p, then estimate the image matrix (ME-Net)."""

    randomized = True

    def __init__(self, method: str = "nuclear", p_start: float = 0.8, p_end: float = 1.0, masks: int = 10,
                 channel_mode: str = "concat", usvt_fraction: float = 0.8, nuclear_weight: float = 1.0,
                 nuclear_tolerance: float = 1e-4, nuclear_max_iterations: int = 500,
                 softimpute_shrinkage: float | None = None, softimpute_tolerance: float = 1e-3,
                 softimpute_max_iterations: int = 100, surrogate_iterations: int = 3) -> None:
        self.method = check_choice("method", method, METHODS)
        self.p_start = check_probability("p_start", p_start)
        self.p_end = check_probability("p_end", p_end)
        if self.p_end < self.p_start:
            raise ValueError(f"p_end={p_end!r} must be >= p_start={p_start!r}")
        self.masks = check_int("masks", masks, 1)
        self.channel_mode = check_choice("channel_mode", channel_mode, CHANNEL_MODES)
        self.usvt_fraction = check_probability("usvt_fraction", usvt_fraction)
        self.nuclear_weight = check_real("nuclear_weight", nuclear_weight, 0.0, float("inf"), high_open=True)
        self.nuclear_tolerance = check_real("nuclear_tolerance", nuclear_tolerance, 0.0, 1.0, low_open=True)
        self.nuclear_max_iterations = check_int("nuclear_max_iterations", nuclear_max_iterations, 1)
        if softimpute_shrinkage is not None:
            check_real("softimpute_shrinkage", softimpute_shrinkage, 0.0, float("inf"), high_open=True)
        self.softimpute_shrinkage = softimpute_shrinkage
        self.softimpute_tolerance = check_real("softimpute_tolerance", softimpute_tolerance, 0.0, 1.0, low_open=True)
        self.softimpute_max_iterations = check_int("softimpute_max_iterations", softimpute_max_iterations, 1)
        self.surrogate_iterations = check_int("surrogate_iterations", surrogate_iterations, 1)

    @property
    def training_probabilities(self) -> list[float]:
        """p_1..p_n of the n training masks, evenly spread over [p_start, p_end]."""
        return torch.linspace(self.p_start, self.p_end, self.masks, dtype=torch.float64).tolist()

    @property
    def test_probability(self) -> float:
        """p at inference: the mean of the training probabilities (section 2.3)."""
        return sum(self.training_probabilities) / self.masks

    def sample_mask(self, images: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
        """Observation mask shaped like `to_matrices(images)`: per entry (concat) or per pixel (separate)."""
        batch, channels, height, width = images.shape
        generator = generator_for(images, generator)
        if self.channel_mode == "concat":
            return bernoulli_mask((batch, 1, height, channels * width), p, generator, images.device)
        return bernoulli_mask((batch, 1, height, width), p, generator, images.device).expand(-1, channels, -1, -1)

    def _to_matrices(self, images: torch.Tensor) -> torch.Tensor:
        return to_matrices(images, self.channel_mode) * 2 - 1

    def _to_images(self, estimate: torch.Tensor, channels: int) -> torch.Tensor:
        return to_images((estimate.clamp(-1, 1) + 1) / 2, self.channel_mode, channels)

    def estimate(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Deterministic part: matrix estimation of the images observed on `mask`."""
        matrices = self._to_matrices(images)
        if self.method == "usvt":
            keep = int(self.usvt_fraction * min(matrices.shape[-2:]))
            estimate = usvt(matrices, mask, keep)
        elif self.method == "softimpute":
            estimate = soft_impute(matrices, mask, self.softimpute_shrinkage, self.softimpute_tolerance,
                                   self.softimpute_max_iterations)
        else:
            estimate = nuclear_norm(matrices, mask, self.nuclear_weight, self.nuclear_tolerance,
                                    self.nuclear_max_iterations)
        return self._to_images(estimate, images.shape[1])

    def refine(self, images: torch.Tensor, mask: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """`surrogate_iterations` differentiable iterations of the ME method from the image `start`
        (held constant), observing `images` on `mask` (`matrix_estimation.unrolled_estimate`)."""
        matrices = self._to_matrices(images)
        if self.method == "softimpute":
            threshold = soft_impute_threshold(torch.where(mask, matrices, torch.zeros_like(matrices)),
                                              self.softimpute_shrinkage)
        else:
            threshold = self.nuclear_weight / 2
        estimate = unrolled_estimate(matrices, mask, self._to_matrices(start), threshold,
                                     self.surrogate_iterations, keep_observed=self.method == "softimpute")
        return self._to_images(estimate, images.shape[1])

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The ME step made differentiable, on the forward's mask (BPDA replays the generator).

        The BPDA surrogate (Athalye et al. 2018, section 4.1) of `003_b8a380e28ee315f5.txt`
        section 2.2 (eq. 1-2; USVT, Soft-Impute and nuclear-norm ME of section 3.5).

        USVT is one truncated SVD, differentiated exactly. Soft-Impute and the nuclear-norm FISTA
        run for real (no gradient), then `refine` repeats `surrogate_iterations` of their
        iterations from that estimate, differentiated by autograd through the SVD.
        """
        mask = self.sample_mask(images, self.test_probability, generator)
        if self.method == "usvt":
            return self.estimate(images, mask)
        with torch.no_grad():
            start = self.estimate(images.detach(), mask)
        return self.refine(images, mask, start)

    def defend_with(self, images: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
        return self.estimate(images, self.sample_mask(images, p, generator))

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.defend_with(images, self.test_probability, generator)

    def training_views(self, images: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """The n reconstructions of each image used for training, one per p_i (section 2.3)."""
        check_images(images)
        with torch.no_grad():
            return [self.defend_with(images, p, generator) for p in self.training_probabilities]
