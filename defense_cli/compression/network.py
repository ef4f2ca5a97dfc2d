"""Finding, naming and replacing the conv layers of a model.

Conv layers are named `conv1`, `conv2`, ... in module order (the thesis's C1..C5 naming), next to
their module path. A stage is a run of consecutive convs with the same output size (VGG's blocks
between poolings, the thesis's "convolution stages" of Table 2.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from defense_cli.errors import ConfigError


@dataclass(frozen=True)
class ConvLayer:
    """One conv of a model: its short name, module path, shapes (in C, H, W -> out C, H, W) and stage."""

    name: str
    path: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stage: int


def conv_layers(model: nn.Module, image_shape: tuple[int, int, int]) -> list[ConvLayer]:
    """Every nn.Conv2d of `model` in module order, with the shapes seen on one image of `image_shape`."""
    paths = [path for path, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not paths:
        raise ConfigError(f"model {type(model).__name__} has no conv layers to decompose")
    shapes: dict[str, tuple] = {}
    hooks = [get_module(model, p).register_forward_hook(_shape_recorder(shapes, p)) for p in paths]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *image_shape, device=device))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    layers, stage, previous = [], 0, None
    for index, path in enumerate(paths, start=1):
        in_shape, out_shape = shapes[path]
        if out_shape[1:] != previous:
            stage, previous = stage + 1, out_shape[1:]
        layers.append(ConvLayer(f"conv{index}", path, in_shape, out_shape, stage))
    return layers


def _shape_recorder(shapes: dict, path: str):
    def hook(module, inputs, output):
        shapes[path] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
    return hook


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def following_batchnorm(model: nn.Module, path: str) -> str | None:
    """The path of the BatchNorm2d right after the conv at `path` in the same nn.Sequential, if any."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if not isinstance(parent, nn.Sequential) or not child.isdigit():
        return None
    names = list(parent._modules)
    position = names.index(child)
    if position + 1 < len(names) and isinstance(parent[position + 1], nn.BatchNorm2d):
        return f"{parent_path}.{names[position + 1]}" if parent_path else names[position + 1]
    return None


def select_layers(layers: list[ConvLayer], names: list[str] | None, stage: int | None) -> list[ConvLayer]:
    """`names` (conv short names or module paths); else stage `stage`; else all but the first and last."""
    if names is not None:
        known = {layer.name: layer for layer in layers} | {layer.path: layer for layer in layers}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ConfigError(f"compress.layers: {', '.join(map(repr, unknown))} is not a conv layer of this "
                              f"model; allowed: {', '.join(f'{l.name} ({l.path})' for l in layers)}")
        chosen = {known[name].name for name in names}
        return [layer for layer in layers if layer.name in chosen]
    if stage is not None:
        stages = sorted({layer.stage for layer in layers})
        if stage not in stages:
            raise ConfigError(f"compress.stage={stage} does not exist; this model has stages "
                              f"{', '.join(map(str, stages))}")
        return [layer for layer in layers if layer.stage == stage]
    return layers[1:-1]
