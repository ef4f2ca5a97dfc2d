"""Feature squeezing (Xu, Evans and Qi, NDSS 2018): bit-depth reduction and median smoothing.

The baselines of `002_fc3b45851f5789b0.txt` ch. 4, Table 4.6 ("Feature Squeezing [XEQ17]": bit depth
2 and 5 bits, median smoothing 2x2 and 3x3). Xu et al. squeeze with
`x_int = rint(x * (2^bits - 1)); x = x_int / (2^bits - 1)` and
`scipy.ndimage.median_filter(x, size=(1, w, w, 1), mode="reflect")`; both are reproduced here batched
in torch, so an even window (2x2) covers the pixel and its upper-left neighbours and takes the upper
of the two middle values, as scipy does. Defaults are Xu et al.'s CIFAR-10 choices (5 bits, 2x2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from defense_cli.defenses.base import Defense
from defense_cli.parameter_checks import check_int


def reduce_bit_depth(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantise [0, 1] values to 2^bits levels (round half to even, like numpy's rint)."""
    levels = 2**bits - 1
    return images.mul(levels).round_().div_(levels)


def _symmetric_index(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-`size` axis padded by half-sample symmetric reflection (scipy 'reflect')."""
    index = torch.arange(-before, size + after, device=device).remainder(2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def _median_of_three(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def _median_2x2(padded: torch.Tensor) -> torch.Tensor:
    """Upper median (3rd smallest) of each 2x2 window: sort vertical pairs, then combine two columns."""
    low = torch.minimum(padded[..., :-1, :], padded[..., 1:, :])
    high = torch.maximum(padded[..., :-1, :], padded[..., 1:, :])
    return torch.maximum(torch.minimum(high[..., :-1], high[..., 1:]), torch.maximum(low[..., :-1], low[..., 1:]))


def _median_3x3(padded: torch.Tensor) -> torch.Tensor:
    """Median of each 3x3 window: sort vertical triples, then median(max of lows, median of middles,
    min of highs) over three adjacent columns (the classic exact median-of-9 network)."""
    top, middle, bottom = padded[..., :-2, :], padded[..., 1:-1, :], padded[..., 2:, :]
    low, high = torch.minimum(top, middle), torch.maximum(top, middle)
    high, upper = torch.maximum(high, bottom), torch.minimum(high, bottom)
    low, mid = torch.minimum(low, upper), torch.maximum(low, upper)
    max_low = torch.maximum(torch.maximum(low[..., :-2], low[..., 1:-1]), low[..., 2:])
    min_high = torch.minimum(torch.minimum(high[..., :-2], high[..., 1:-1]), high[..., 2:])
    return _median_of_three(max_low, _median_of_three(mid[..., :-2], mid[..., 1:-1], mid[..., 2:]), min_high)


def _median_any(padded: torch.Tensor, window: int) -> torch.Tensor:
    patches = padded.unfold(2, window, 1).unfold(3, window, 1).flatten(-2)
    return patches.kthvalue(window * window // 2 + 1, dim=-1).values


def median_filter(images: torch.Tensor, window: int) -> torch.Tensor:
    """scipy.ndimage.median_filter with size (window, window) and mode 'reflect' on each (H, W) plane.

    2x2 and 3x3 (the windows of Xu et al. and Table 4.6) use min/max networks over shifted views;
    other sizes take the k-th value of the unfolded windows."""
    if window == 1:
        return images.clone()
    before, after = window // 2, window - 1 - window // 2
    if window <= 3:  # reflecting one row / column repeats it
        padded = F.pad(images, (before, after, before, after), mode="replicate")
    else:
        h, w = images.shape[-2:]
        rows = _symmetric_index(h, before, after, images.device)
        cols = _symmetric_index(w, before, after, images.device)
        padded = images.index_select(2, rows).index_select(3, cols)
    if window == 2:
        return _median_2x2(padded)
    if window == 3:
        return _median_3x3(padded)
    return _median_any(padded, window)


class BitDepthReduction(Defense):
    """Bit-depth reduction to `bits` bits per channel (1..8), Xu et al. 2018 section 4.1."""

    def __init__(self, bits: int = 5) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits={bits!r} must be an integer in 1..8")
        self.bits = bits

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return reduce_bit_depth(images, self.bits)


class MedianSmoothing(Defense):
    """Median smoothing over a `window` x `window` square (window >= 1), Xu et al. 2018 section 4.2."""

    def __init__(self, window: int = 2) -> None:
        check_int("window", window, 1)
        self.window = window

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return median_filter(images, self.window)

    def surrogate(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The median filter itself (out-of-place min/max and gathers): `threat_model.bpda=surrogate`
        then gives its exact gradient, which flows to the pixel each window's median comes from."""
        return median_filter(images, self.window)
