"""Whole-model and single-stage decomposition (`000_1720f31fb7e6036a.txt` section 2.6.1-2.6.2).

Layers are approximated one after another in network order. For each, the sampled responses of
the original network Y = W X and of the already approximated network Y_hat = W X_hat (the
asymmetric target) are fed to the chosen method, the conv is replaced by its decomposition, and
the linear ||Y - Y'||_F / ||Y||_F and nonlinear ||relu(Y) - relu(Y')||_F / ||relu(Y)||_F error
ratios of the new layer's output Y' are measured on the same points (Figures 2.5-2.8, Table 2.7).
A BatchNorm right after a decomposed conv is first folded into it (inference-equivalent), so
that Y is the pre-ReLU response of eq. 2.2. With `procedure=iterative` the network is fine-tuned
after each layer (the thesis's iterative two-step procedure); otherwise once, by the caller.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from defense_cli.compression.cost import count_flops, lowrank_macs
from defense_cli.compression.layers import (LowRankConv, SeparableConv, check_decomposable, fold_batchnorm,
                                            weight_svd_map)
from defense_cli.compression.network import (ConvLayer, conv_layers, following_batchnorm, get_module, select_layers,
                                             set_module)
from defense_cli.compression.responses import ResponseSampler
from defense_cli.compression.settings import CompressSettings
from defense_cli.compression.solvers import NL2A_SCHEDULE, l1_lrar, lambda_steps, nl2a
from defense_cli.errors import ConfigError
from defense_cli.progress import progress

log = logging.getLogger(__name__)


@dataclass
class LayerReport:
    """One decomposed layer: cost before/after (MACs; FLOPs = 2 MACs) and approximation errors."""

    name: str
    path: str
    method: str
    filters: int
    rank: int
    macs_before: int
    macs_after: int
    linear_error: float
    nonlinear_error: float
    residuals: list[float] = field(default_factory=list)

    @property
    def remain_ratio(self) -> float:
        return self.macs_after / self.macs_before


@dataclass(frozen=True)
class LayerSpec:
    """How a conv was replaced: enough to rebuild the compressed architecture before loading weights."""

    path: str
    kind: str  # "lowrank" | "separable"
    rank: int
    batchnorm: str | None


def vh2_rank(layer_rank: int, conv: nn.Conv2d, in_shape: tuple[int, int, int],
             out_shape: tuple[int, int, int]) -> int:
    """K vertical filters with the MACs of a rank-m LowRankConv (eq. 2.7), rounded, at least 1.

    The thesis compares VH2 with L1-LRAR "under the same execution time" (Table 2.3); matching
    MACs is that choice. The vertical k_h x 1 conv runs on h_o x w_in positions (it does not stride
    or pad along the width), the horizontal 1 x k_w conv on h_o x w_o. K is capped at
    rank(A) <= min(c k_h, n k_w), where the SVD is exact.
    """
    n, c, kh, kw = conv.weight.shape
    h_out, w_out = out_shape[1:]
    target = lowrank_macs(n, layer_rank, c, kh, kw, h_out, w_out)
    per_filter = c * kh * h_out * in_shape[2] + n * kw * h_out * w_out
    return max(1, min(round(target / per_filter), c * kh, n * kw))


def fold_layer(model: nn.Module, path: str, batchnorm: str | None) -> nn.Conv2d:
    """Fold the BatchNorm at `batchnorm` (if any) into the conv at `path` (BN -> Identity); returns the conv."""
    conv = get_module(model, path)
    if batchnorm is not None:
        conv = fold_batchnorm(conv, get_module(model, batchnorm))
        set_module(model, path, conv)
        set_module(model, batchnorm, nn.Identity())
    return conv


def empty_decomposition(conv: nn.Conv2d, spec: LayerSpec) -> nn.Module:
    """The decomposed module's shape for `spec`, weights to be loaded."""
    return LowRankConv(conv, spec.rank) if spec.kind == "lowrank" else SeparableConv(conv, spec.rank)


def apply_structure(model: nn.Module, specs: list[dict]) -> nn.Module:
    """Rebuild a compressed architecture on a base model (weights are loaded afterwards)."""
    for entry in specs:
        spec = LayerSpec(**entry)
        set_module(model, spec.path, empty_decomposition(fold_layer(model, spec.path, spec.batchnorm), spec))
    return model


def decompose_conv(method: str, conv: nn.Conv2d, layer: ConvLayer, rank: int, Y: torch.Tensor,
                   Y_hat: torch.Tensor, solver: dict) -> tuple[nn.Module, list[float], str, int]:
    """The replacement module for `conv`, the solver's per-iteration residuals, its kind and rank."""
    if method == "vh2":
        k = vh2_rank(rank, conv, layer.in_shape, layer.out_shape)
        return SeparableConv.from_conv(conv, k), [], "separable", k
    if method == "l1_lrar":
        mapping = l1_lrar(Y, Y_hat, rank, **solver)
    else:
        mapping = nl2a(Y, Y_hat, rank, lambda_steps(solver.get("lambda_schedule", NL2A_SCHEDULE)))
    return LowRankConv.from_map(conv, mapping), mapping.residuals, "lowrank", rank


def error_ratios(Y: torch.Tensor, Y_new: torch.Tensor) -> tuple[float, float]:
    """(||Y - Y'|| / ||Y||, ||relu(Y) - relu(Y')|| / ||relu(Y)||), section 2.6.2."""
    tiny = torch.finfo(Y.dtype).tiny
    linear = torch.linalg.norm(Y - Y_new) / torch.linalg.norm(Y).clamp_min(tiny)
    relu = torch.relu(Y)
    nonlinear = torch.linalg.norm(relu - torch.relu(Y_new)) / torch.linalg.norm(relu).clamp_min(tiny)
    return float(linear), float(nonlinear)


@dataclass
class Decomposition:
    model: nn.Module
    reports: list[LayerReport]
    specs: list[LayerSpec]


def chosen_layers(model: nn.Module, image_shape: tuple[int, int, int], settings: CompressSettings) -> list[ConvLayer]:
    """The conv layers `settings` selects; ConfigError when there is none or a name is unknown."""
    layers = conv_layers(model, image_shape)
    chosen = select_layers(layers, settings.layers, settings.stage)
    if not chosen:
        raise ConfigError(f"no conv layer selected: this model's convs are {', '.join(l.name for l in layers)}; "
                          "the default skips the first and last one, so set compress.layers=[...]")
    return chosen


def decompose_model(model: nn.Module, images: torch.Tensor, settings: CompressSettings,
                    finetune: Callable[[nn.Module], None] | None = None) -> Decomposition:
    """Decompose the selected conv layers of a copy of `model` (see the module docstring).

    `images` (N, C, H, W) in [0, 1] are the training images whose responses are sampled; `finetune`
    is called on the approximated model after each layer when `settings.procedure == "iterative"`.
    """
    chosen = chosen_layers(model, tuple(images.shape[1:]), settings)
    reference = copy.deepcopy(model).eval()
    approx = copy.deepcopy(model).eval()
    sampler = ResponseSampler(images, settings.samples, settings.batch_size, settings.seed)
    reports, specs = [], []
    for layer in progress(chosen, len(chosen), f"decompose {len(chosen)} conv layers ({settings.method})", "layer"):
        report, spec = _decompose_one(reference, approx, layer, sampler, settings)
        log.info("%s: rank %d, linear error %.4f, nonlinear error %.4f", layer.name, report.rank,
                 report.linear_error, report.nonlinear_error)
        reports.append(report)
        specs.append(spec)
        if finetune is not None and settings.procedure == "iterative":
            finetune(approx)
            approx.eval()
    return Decomposition(approx, reports, specs)


def _decompose_one(reference: nn.Module, approx: nn.Module, layer: ConvLayer, sampler: ResponseSampler,
                   settings: CompressSettings) -> tuple[LayerReport, LayerSpec]:
    conv = get_module(approx, layer.path)
    check_decomposable(conv, layer.name)
    rank = settings.rank_for(layer.name, conv.out_channels)
    batchnorm = following_batchnorm(approx, layer.path)
    fold_layer(reference, layer.path, batchnorm)
    conv = fold_layer(approx, layer.path, batchnorm)
    Y = sampler.collect(reference, layer.path, layer.out_shape)
    Y_hat = sampler.collect(approx, layer.path, layer.out_shape)
    module, residuals, kind, used_rank = decompose_conv(settings.method, conv, layer, rank, Y, Y_hat, settings.solver)
    set_module(approx, layer.path, module)
    linear, nonlinear = error_ratios(Y, sampler.collect(approx, layer.path, layer.out_shape))
    input_shape = (1, *layer.in_shape)
    report = LayerReport(layer.name, layer.path, settings.method, conv.out_channels, used_rank,
                         count_flops(conv, input_shape) // 2, count_flops(module, input_shape) // 2,
                         linear, nonlinear, residuals)
    return report, LayerSpec(layer.path, kind, used_rank, batchnorm)


def structure_of(decomposition: Decomposition) -> list[dict]:
    return [asdict(spec) for spec in decomposition.specs]


def data_free_lowrank(model: nn.Module, ratio: float, image_shape: tuple[int, int, int]) -> nn.Module:
    """A copy of `model` with every conv but the first and last replaced by a rank-(ratio n)
    LowRankConv from the SVD of its weights (no data; for timing and FLOPs benchmarks)."""
    compressed = copy.deepcopy(model).eval()
    for layer in conv_layers(model, image_shape)[1:-1]:
        conv = fold_layer(compressed, layer.path, following_batchnorm(compressed, layer.path))
        rank = max(1, round(ratio * conv.out_channels))
        set_module(compressed, layer.path, LowRankConv.from_map(conv, weight_svd_map(conv, rank)))
    return compressed
