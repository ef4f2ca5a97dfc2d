"""Pixel deflection with R-CAM and wavelet denoising (`002_fc3b45851f5789b0.txt`, ch. 4).

Algorithm 2 (section 4.5): K times, draw a pixel p uniformly from the image and a pixel n uniformly
from R_p^r ∩ I, the square of apothem r around p clipped to the image, and set I'[p] = I[n].
Targeted deflection (sections 4.6, 4.8): each draw is deflected only if the R-CAM value v of p is
lower than a U(0, 1) sample, so R-CAM is the probability of *not* deflecting p. Then wavelet
denoising (4.7-4.8, `defense_cli.defenses.wavelet`). Table 4.1: sigma = 0.04, window r = 10,
K = 100 deflections on ImageNet images (ResNet-50, 224 x 224).

Batched: the K draws of every image are tensors (B, K); no loop over images, pixels or draws.

Choices where the text is silent, each a constructor argument:
- `reference_size` (224): K and r are given for 224 x 224 images. For an H x W image they are
  scaled to keep the same share of pixels deflected and the same window relative to the image:
  K' = round(K * H * W / 224^2) (at least 1 when K > 0) and r' = max(1, round(r * min(H, W) / 224)).
  On CIFAR-10 (32 x 32) that is K' = 2, r' = 1; on MNIST (28 x 28) K' = 2, r' = 1. `null` uses K and
  r unchanged (Table 4.9's K = 1K and 4.10's r = 100 then need `reference_size: null`).
- Algorithm 2 reads every value from the input I (not from the partly deflected I'), so the draws
  are independent; when two draws hit the same pixel the later one wins, as in a sequential loop.
- `per_channel` (false): Algorithm 2 moves a whole pixel (all channels). true moves one channel
  value per draw, the channel cycling with the draw index (our recollection of the authors' public
  code, github.com/iamaaditya/pixel-deflection, which is not available here to check).
- K counts draws, deflected or not (section 4.8 (d): "iterate this process K times").
- `jpeg_quality` (null): JPEG after the rest, for the JPEG columns of Table 4.7.
- `votes` (1): how many stochastic runs a majority vote takes (Ens-10 of Table 4.1 is 10); a
  defense returns images, so the vote is done by `defense_cli.defenses.ensemble.majority_vote`.
"""

from __future__ import annotations

import torch

from defense_cli.defenses.base import Defense, DefenseContext
from defense_cli.defenses.differentiable_jpeg import differentiable_jpeg
from defense_cli.defenses.jpeg import jpeg_roundtrip
from defense_cli.defenses.rcam import check_cam_model, robust_activation_map
from defense_cli.defenses.wavelet import WaveletDenoising


def scaled_parameters(deflections: int, window: int, height: int, width: int,
                      reference_size: int | None) -> tuple[int, int]:
    """(K', r') for an H x W image: unchanged when `reference_size` is None, else scaled (see module doc)."""
    if reference_size is None:
        return deflections, window
    k = round(deflections * height * width / reference_size**2)
    k = max(k, 1) if deflections > 0 else 0
    r = max(1, round(window * min(height, width) / reference_size))
    return k, r


def _neighbour(position: torch.Tensor, size: int, window: int, generator: torch.Generator | None) -> torch.Tensor:
    """A coordinate uniform on [p - r, p + r] ∩ [0, size - 1] for each p (one axis of U(R_p^r ∩ I))."""
    low = (position - window).clamp(min=0)
    high = (position + window).clamp(max=size - 1)
    u = torch.rand(position.shape, generator=generator, device=position.device)
    return (low + (u * (high - low + 1)).long()).clamp_(max=high)


def _resolve_collisions(target: torch.Tensor, source: torch.Tensor,
                        active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the K writes of each row order-free: every draw to a pixel carries the source of the
    last active draw to that pixel (the sequential loop's winner), or the pixel itself if none.

    Rows of (target, source, active) are sorted by (target, active, draw), so each pixel's draws form
    a run whose last element decides; returns (target, source) in that sorted order."""
    k = target.shape[-1]
    draw = torch.arange(k, device=target.device).expand_as(target)
    order = torch.sort(target * (2 * k) + torch.where(active, draw + k, draw), dim=-1).indices
    target, source, active = target.gather(-1, order), source.gather(-1, order), active.gather(-1, order)
    run_ends = torch.ones_like(active)
    run_ends[..., :-1] = target[..., 1:] != target[..., :-1]
    end = torch.where(run_ends, draw, torch.full_like(draw, k)).flip(-1).cummin(-1).values.flip(-1)
    decides = active.gather(-1, end)
    return target, torch.where(decides, source.gather(-1, end), target)


def draw_deflections(images: torch.Tensor, deflections: int, window: int, generator: torch.Generator | None = None,
                     keep_probability: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random part of Algorithm 2 for a (B, C, H, W) batch: flat pixel indices (B, K) of the
    targets p_i and sources n_i, and whether each draw deflects (False where R-CAM keeps p_i)."""
    b, _, h, w = images.shape
    device = images.device
    shape = (b, deflections)
    row = torch.randint(h, shape, generator=generator, device=device)
    col = torch.randint(w, shape, generator=generator, device=device)
    target = row * w + col
    source = _neighbour(row, h, window, generator) * w + _neighbour(col, w, window, generator)
    if keep_probability is None:
        return target, source, torch.ones(shape, dtype=torch.bool, device=device)
    kept = keep_probability.reshape(b, h * w).gather(1, target)
    return target, source, kept < torch.rand(shape, generator=generator, device=device, dtype=kept.dtype)


def apply_deflections(images: torch.Tensor, target: torch.Tensor, source: torch.Tensor, active: torch.Tensor,
                      per_channel: bool = False) -> torch.Tensor:
    """I'[p_i] = I[n_i] for the active draws, in draw order (a later draw to the same pixel wins).

    Whole pixels move, or with `per_channel` only channel i mod C of draw i."""
    b, c, h, w = images.shape
    k = target.shape[-1]
    if per_channel:
        channel = (torch.arange(k, device=images.device) % c) * (h * w)
        flat = images.reshape(b, 1, c * h * w)
        target, source = target + channel, source + channel
    else:
        flat = images.reshape(b, c, h * w)
    target, source = _resolve_collisions(target, source, active)
    index = target.unsqueeze(1).expand(b, flat.shape[1], k)
    moved = flat.gather(-1, source.unsqueeze(1).expand_as(index))
    return flat.clone().scatter_(-1, index, moved).view_as(images)


def deflect_pixels(images: torch.Tensor, deflections: int, window: int, generator: torch.Generator | None = None,
                   keep_probability: torch.Tensor | None = None, per_channel: bool = False) -> torch.Tensor:
    """Algorithm 2 on a (B, C, H, W) batch: `deflections` draws per image with apothem `window`.

    `keep_probability` (B, H, W) in [0, 1] (R-CAM) is the chance that a drawn pixel is left alone.
    """
    if deflections == 0:
        return images.clone()
    draws = draw_deflections(images, deflections, window, generator, keep_probability)
    return apply_deflections(images, *draws, per_channel=per_channel)


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


class PixelDeflection(Defense):
    """Pixel deflection (Algorithm 2) guided by R-CAM, then BayesShrink wavelet denoising.

    `002_fc3b45851f5789b0.txt` ch. 4: Algorithm 2 (4.5), R-CAM eq. 4.4-4.5 (4.6.1), wavelet
    denoising eq. 4.6 (4.7-4.8), the method of section 4.8 with the parameters of Table 4.1.
    Each part switches off for the ablations of Tables 4.7-4.8 (`rcam`, `denoise`, `jpeg_quality`,
    `threshold_mode`, `threshold_method`). Choices the text leaves open: see the module docstring.
    """

    randomized = True

    def __init__(self, deflections: int = 100, window: int = 10, reference_size: int | None = 224,
                 per_channel: bool = False, rcam: bool = True, rcam_top_k: int = 5, denoise: bool = True,
                 sigma: float = 0.04, threshold_method: str = "BayesShrink", threshold_mode: str = "soft",
                 convert2ycbcr: bool = True, wavelet: str = "db1", levels: int | None = None,
                 jpeg_quality: int | None = None, votes: int = 1) -> None:
        _check_count("deflections", deflections, 0)
        _check_count("window", window, 1)
        if reference_size is not None:
            _check_count("reference_size", reference_size, 1)
        _check_count("rcam_top_k", rcam_top_k, 1)
        _check_count("votes", votes, 1)
        if jpeg_quality is not None and (isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int)
                                         or not 1 <= jpeg_quality <= 100):
            raise ValueError(f"jpeg_quality={jpeg_quality!r} must be null (no JPEG) or an integer in 1..100")
        self.deflections = deflections
        self.window = window
        self.reference_size = reference_size
        self.per_channel = bool(per_channel)
        self.rcam = bool(rcam)
        self.rcam_top_k = rcam_top_k
        self.denoise = bool(denoise)
        self.denoiser = WaveletDenoising(sigma, threshold_method, threshold_mode, convert2ycbcr, wavelet, levels)
        self.jpeg_quality = jpeg_quality
        self.votes = votes
        self.needs_classifier = self.rcam
        self._classifier: torch.nn.Module | None = None

    def prepare(self, context: DefenseContext) -> None:
        if self.rcam:
            check_cam_model(context.classifier)
            self._classifier = context.classifier

    def keep_probability(self, images: torch.Tensor) -> torch.Tensor | None:
        """R-CAM (B, H, W) when `rcam` is on, else None (uniform deflection)."""
        if not self.rcam:
            return None
        if self._classifier is None:
            raise ValueError("rcam=true: call prepare() with a DefenseContext that has a classifier first")
        return robust_activation_map(self._classifier, images, self.rcam_top_k)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self._defend(images, generator, differentiable=False)

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The same draws of Algorithm 2 (`002_fc3b45851f5789b0.txt` 4.5; BPDA replays the
        generator; R-CAM, which only decides which draws act, is computed without gradient),
        applied by gather / scatter so that the gradient of a deflected pixel flows to its source
        pixel; then the wavelet denoiser's exact gradient, and with `jpeg_quality` the torch JPEG
        (`differentiable_jpeg`, cubic rounding). Without JPEG the forward is the defense's exactly."""
        return self._defend(images, generator, differentiable=True)

    def _defend(self, images: torch.Tensor, generator: torch.Generator | None, differentiable: bool) -> torch.Tensor:
        k, r = scaled_parameters(self.deflections, self.window, *images.shape[-2:], self.reference_size)
        with torch.no_grad():
            keep = self.keep_probability(images.detach())
        out = deflect_pixels(images, k, r, generator, keep, self.per_channel)
        if self.denoise:
            out = self.denoiser.transform(out, generator)
        if self.jpeg_quality is not None:
            out = differentiable_jpeg(out, self.jpeg_quality) if differentiable else jpeg_roundtrip(out, self.jpeg_quality)
        return out
