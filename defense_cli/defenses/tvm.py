"""TV minimisation (Guo et al. 2018, "Countering adversarial images using input transformations").

The TVM baseline of `000_1720f31fb7e6036a.txt` ch. 3 (Tables 3.1-3.6, reproduced there with the code
of Athalye et al. [28]) and ch. 4 (Table 4.3): drop pixels at random, then find the image of small
total variation that fits only the kept pixels:

    min_{0 <= z <= 1}  ||X . (z - x)||_2^2 + lambda_tv * TV(z),      X = Bernoulli(keep_prob) mask.

Choices where Guo et al.'s text is silent, taken from the released defense code they were
reproduced with (`defend_tv` of Athalye et al.): keep_prob = 0.5, lambda_tv = 0.03 on [0, 1] images,
a squared L2 data term, anisotropic TV, one mask per pixel location shared by all channels, each
channel denoised on its own. The reference code solves it by split Bregman with Gauss-Seidel sweeps
(a per-pixel loop); here the same problem is solved batched by the primal-dual algorithm of
Chambolle and Pock 2011 (Algorithm 1, theta = 1) with a fixed number of iterations. Its BPDA surrogate unrolls those
iterations (autograd through Chambolle-Pock, as in unrolled primal-dual networks).
"""

from __future__ import annotations

import math

import torch

from defense_cli.defenses.base import Defense
from defense_cli.parameter_checks import check_int
from defense_cli.defenses.tv import operator_l, operator_lt, project_dual_, total_variation

#: ||L||^2 <= 8 for the discrete gradient (Beck and Teboulle, Lemma 4.2); tau * sigma * 8 = 1.
GRADIENT_NORM_SQUARED = 8.0


def tv_inpaint(images: torch.Tensor, keep: torch.Tensor, weight: float, iterations: int,
               isotropic: bool = False, step_ratio: float = 1.0) -> torch.Tensor:
    """Chambolle-Pock for min_{0<=z<=1} ||keep . (z - images)||^2 + weight TV(z), batched over (..., H, W).

    `keep` (broadcastable to `images`, 0/1) marks the fitted pixels; dropped pixels are filled by
    the TV term alone. Primal step tau = step_ratio / sqrt(8), dual step sigma = 1 / (step_ratio sqrt(8)).
    """
    tau = step_ratio / math.sqrt(GRADIENT_NORM_SQUARED)
    sigma = 1.0 / (step_ratio * math.sqrt(GRADIENT_NORM_SQUARED))
    fit = 2.0 * tau * keep.to(images.dtype)
    fitted_target = fit * images
    inverse_denominator = 1.0 / (1.0 + fit)
    z = images.clone()
    z_bar = z
    dual = images.new_zeros((2,) + images.shape)
    # a reused buffer, unless autograd differentiates the iterations (the BPDA surrogate)
    differences = None if images.requires_grad else images.new_zeros((2,) + images.shape)
    for _ in range(iterations):
        project_dual_(dual.sub_(operator_lt(z_bar, differences), alpha=sigma), weight, isotropic)
        z_next = torch.add(z, operator_l(dual), alpha=tau).add_(fitted_target).mul_(inverse_denominator).clamp_(0, 1)
        z_bar = torch.lerp(z, z_next, 2.0)
        z = z_next
    return z


def inpainting_objective(z: torch.Tensor, images: torch.Tensor, keep: torch.Tensor, weight: float,
                         isotropic: bool = False) -> torch.Tensor:
    """||keep . (z - images)||^2 + weight TV(z) per matrix (shape z.shape[:-2])."""
    return (keep * (z - images)).square().sum(dim=(-2, -1)) + weight * total_variation(z, isotropic)


class TVMinimization(Defense):
    """Guo et al. 2018 TV minimisation with random pixel dropout (see the module docstring).

    keep_prob: probability that a pixel location is kept (fitted), in (0, 1].
    lambda_tv: TV weight of the objective above (> 0).
    iterations: Chambolle-Pock iterations (fixed count).
    isotropic: isotropic TV instead of the reference code's anisotropic TV.
    """

    randomized = True

    def __init__(self, keep_prob: float = 0.5, lambda_tv: float = 0.03, iterations: int = 60,
                 isotropic: bool = False) -> None:
        if not 0 < keep_prob <= 1:
            raise ValueError(f"keep_prob={keep_prob!r} must lie in (0, 1]")
        if not lambda_tv > 0:
            raise ValueError(f"lambda_tv={lambda_tv!r} must be > 0")
        check_int("iterations", iterations, 1)
        self.keep_prob = float(keep_prob)
        self.lambda_tv = float(lambda_tv)
        self.iterations = iterations
        self.isotropic = bool(isotropic)

    def dropout_mask(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Bernoulli(keep_prob) mask of shape (B, 1, H, W): one draw per pixel location."""
        b, _, h, w = images.shape
        if generator is None:
            generator = torch.Generator(device=images.device)
            generator.seed()
        draws = torch.rand((b, 1, h, w), generator=generator, device=images.device, dtype=images.dtype)
        return draws < self.keep_prob

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        keep = self.dropout_mask(images, generator)
        return tv_inpaint(images, keep, self.lambda_tv, self.iterations, self.isotropic)

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The same `iterations` of Chambolle-Pock (Chambolle and Pock 2011, Algorithm 1) on the same
        dropout mask (BPDA replays the generator), unrolled and differentiated by autograd: each iteration is linear up to the
        dual projection and the box clamp, so the forward is the defense's and the gradient is exact
        almost everywhere."""
        return tv_inpaint(images, self.dropout_mask(images.detach(), generator), self.lambda_tv,
                          self.iterations, self.isotropic)
