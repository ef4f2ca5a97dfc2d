"""Decomposed convolution modules and the weight algebra that fills them.

- `LowRankConv`: m basic filters (m x c x k x k) then a 1x1 conv (n x m) with bias
  (`000_1720f31fb7e6036a.txt` Figure 2.1, eq. 2.6); its cost is eq. 2.7.
- `SeparableConv`: Jaderberg et al. 2014 scheme 2 (the thesis's VH2 [15]): K vertical k x 1 filters
  then n horizontal 1 x k filters, from an SVD of the kernel reshaped to (c k) x (k n).
- `fold_batchnorm`: conv followed by an eval-mode BatchNorm -> one conv with bias, so that the
  decomposed layer's response is the thesis's pre-ReLU response Y = W X + B (eq. 2.2).
"""

from __future__ import annotations

import torch
from torch import nn

from defense_cli.compression.solvers import LowRankMap


def _conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int, kernel: tuple[int, int],
               stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                     bias=bias, padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)


def check_decomposable(conv: nn.Conv2d, name: str) -> None:
    if conv.groups != 1 or isinstance(conv.padding, str):
        raise ValueError(f"layer {name!r} cannot be decomposed: only groups=1 convs with numeric padding are "
                         f"supported (groups={conv.groups}, padding={conv.padding!r})")


class LowRankConv(nn.Sequential):
    """basis: conv with m filters (same kernel, stride, padding as the original); combine: 1x1, n x m, bias."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        basis = _conv_like(conv, conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, bias=conv.bias is not None)
        combine = _conv_like(conv, rank, conv.out_channels, (1, 1), (1, 1), (0, 0), (1, 1), bias=True)
        super().__init__()
        self.basis = basis
        self.combine = combine

    @classmethod
    def from_map(cls, conv: nn.Conv2d, mapping: LowRankMap) -> LowRankConv:
        """W' = Qt W (basic filters, bias Qt b0), combination P with bias b (eq. 2.6 and 2.11)."""
        layer = cls(conv, mapping.rank)
        Qt = mapping.Qt.to(conv.weight)
        with torch.no_grad():
            layer.basis.weight.copy_(torch.einsum("mn,nckl->mckl", Qt, conv.weight))
            if conv.bias is not None:
                layer.basis.bias.copy_(Qt @ conv.bias)
            layer.combine.weight.copy_(mapping.P.to(conv.weight)[:, :, None, None])
            layer.combine.bias.copy_(mapping.bias.to(conv.weight))
        return layer


def weight_svd_map(conv: nn.Conv2d, rank: int) -> LowRankMap:
    """A data-free map from the SVD of W (n x c k k): M = U_m U_m^T (used where responses are not needed)."""
    U = torch.linalg.svd(conv.weight.detach().flatten(1), full_matrices=False).U[:, :rank]
    return LowRankMap(U, U.T, torch.zeros(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype))


class SeparableConv(nn.Sequential):
    """vertical: K filters of c x k_h x 1; horizontal: n filters of K x 1 x k_w with the original bias."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        vertical = _conv_like(conv, conv.in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        horizontal = _conv_like(conv, rank, conv.out_channels, (1, kw), (1, sw), (0, pw), (1, dw),
                                bias=conv.bias is not None)
        super().__init__()
        self.vertical = vertical
        self.horizontal = horizontal

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> SeparableConv:
        """Scheme 2 by SVD: W[n, c, y, x] reshaped to A[(c, y), (x, n)] = U S V^T, rank K.

        vertical[j, c, y] = U[(c, y), j] sqrt(s_j), horizontal[n, j, x] = sqrt(s_j) V^T[j, (x, n)].
        This is the closed-form L2-optimal scheme-2 kernel (Tai et al. 2016); exact when rank(A) <= K.
        """
        n, c, kh, kw = conv.weight.shape
        A = conv.weight.detach().permute(1, 2, 3, 0).reshape(c * kh, kw * n)
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        root = S[:rank].sqrt()
        layer = cls(conv, rank)
        with torch.no_grad():
            layer.vertical.weight.copy_((U[:, :rank] * root).T.reshape(rank, c, kh, 1))
            horizontal = (root[:, None] * Vh[:rank]).reshape(rank, kw, n).permute(2, 0, 1)
            layer.horizontal.weight.copy_(horizontal[:, :, None, :])
            if conv.bias is not None:
                layer.horizontal.bias.copy_(conv.bias)
        return layer


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """The conv with bias equal to bn(conv(x)) in eval mode (BN's running statistics)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    folded = _conv_like(conv, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, bias=True)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        base = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
        folded.bias.copy_(base * scale + shift)
    return folded
