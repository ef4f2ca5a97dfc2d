"""Trained weights from the user's files: a state_dict for one of the architectures
(`model=resnet18 model.checkpoint=net.pt`) or a whole saved model (`model=saved model.path=net.pt2`,
TorchScript or `torch.export`).

A state_dict is read with `torch.load(weights_only=True)` (no code from the file runs) and must
match the architecture key for key and shape for shape; the error lists what differs. A model that
comes with its weights is marked `pretrained`: `run` evaluates it and never trains it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from defense_cli.errors import ConfigError

#: prefixes a state_dict may carry: a saved `Classifier` ("backbone.") or a DataParallel model ("module.")
STRIPPED_PREFIXES = ("backbone.", "module.")
#: `Classifier` buffers a saved Classifier state_dict carries besides its backbone's weights
CLASSIFIER_BUFFERS = ("mean", "std")
LISTED = 4  # keys named in a mismatch error before "and N more"


def existing_file(path: str, key: str) -> Path:
    """`path` (with ~ expanded) when it is a file, else a ConfigError naming `key`."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={path!r} is not a file; give the path of a file saved with torch.save, "
                          "torch.jit.save or torch.export.save")
    return file


def read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone tensors, normalisation buffers) of a state_dict file (weights only), with a saved
    Classifier's or DataParallel's key prefixes removed; the buffers are those of a saved Classifier."""
    file = existing_file(path, "model.checkpoint")
    if saved_format(file) in ("torchscript", "export"):
        raise ConfigError(f"model.checkpoint={path!r} is a whole saved model ({saved_format(file)}), not a "
                          f"state_dict: use model=saved model.path={path} model.normalization=dataset|none")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"model.checkpoint={path!r} is not a state_dict that loads with weights_only=True "
                          f"({type(err).__name__}: {str(err).splitlines()[0]}); save one with "
                          "torch.save(model.state_dict(), path), or use model=saved for a TorchScript or "
                          "torch.export file") from err
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.checkpoint={path!r} holds a {type(loaded).__name__}, not a state_dict "
                          "(a dict of tensor names to tensors)")
    return ({_without_prefix(k): v for k, v in state.items() if k not in CLASSIFIER_BUFFERS},
            {k: v for k, v in state.items() if k in CLASSIFIER_BUFFERS})


def _without_prefix(key: str) -> str:
    for prefix in STRIPPED_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - LISTED} more" if len(keys) > LISTED else ""
    return ", ".join(keys[:LISTED]) + more


def state_dict_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """What differs between the architecture's state_dict and the file's: missing keys, unexpected
    keys, and keys whose shapes differ (empty when they match)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k} {tuple(found[k].shape)} where the model has {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(found)) if found[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape of {_listed(shapes)}")
    return problems


def load_checkpoint(classifier: nn.Module, path: str, model_name: str) -> None:
    """Load the state_dict file at `path` into the Classifier's backbone and mark it pretrained. A
    saved Classifier's mean and std must be the ones this config normalises with."""
    state, buffers = read_state_dict(path)
    for name, saved in buffers.items():
        ours = getattr(classifier, name)
        if saved.shape != ours.shape or not torch.allclose(saved, ours, atol=1e-6):
            raise ConfigError(f"model.checkpoint={path!r} was saved with input {name} {saved.flatten().tolist()}; "
                              f"this run normalises with {ours.flatten().tolist()}: set model.normalization "
                              "(dataset or none) or the dataset's mean and std to the ones it was trained with")
    backbone = classifier.backbone
    problems = state_dict_mismatch(backbone.state_dict(), state)
    if problems:
        raise ConfigError(f"model.checkpoint={path!r} does not fit model={model_name}: {'; '.join(problems)}. "
                          "Pick the architecture the weights were trained with (and its options, e.g. "
                          "model.width), or model=saved for a whole saved model")
    backbone.load_state_dict(state)
    backbone.pretrained = True


class SavedModel(nn.Module):
    """A whole model from a file, weights included: TorchScript (`torch.jit.save`) or an exported
    program (`torch.export.save`, evaluated through its `.module()`). It is evaluated as saved:
    `train()`/`eval()` change no layer inside it (an exported program fixes its mode at export)."""

    pretrained = True

    def __init__(self, net: nn.Module, path: str, kind: str) -> None:
        super().__init__()
        self.net = net
        self.path = path
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> "SavedModel":
        self.training = mode
        return self


def saved_format(file: Path) -> str:
    """`torchscript` or `export` from the archive's layout (both are zip files)."""
    if not zipfile.is_zipfile(file):
        return "unknown"
    names = zipfile.ZipFile(file).namelist()
    if any(name.endswith("/archive_format") for name in names):
        return "export"
    if any(name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    return "state_dict" if any(name.endswith("/data.pkl") for name in names) else "unknown"


def saved_model(in_channels: int, num_classes: int, path: str) -> SavedModel:
    """The model saved whole at `path`, checked to map (1, in_channels, H, W) images to num_classes logits
    by the classifier factory."""
    file = existing_file(path, "path")  # raised inside the factory: the message gets its "model." prefix
    kind = saved_format(file)
    if kind == "state_dict":
        raise ConfigError(f"path={path!r} is a state_dict, not a whole model: use the architecture it "
                          f"belongs to with model.checkpoint, e.g. model=resnet18 model.checkpoint={path}")
    if kind == "unknown":
        raise ConfigError(f"path={path!r} is neither a TorchScript file (torch.jit.save) nor an exported "
                          "program (torch.export.save)")
    try:
        net = torch.jit.load(str(file), map_location="cpu") if kind == "torchscript" else \
            torch.export.load(str(file)).module()
    except Exception as err:
        raise ConfigError(f"path={path!r} ({kind}) does not load: {type(err).__name__}: "
                          f"{str(err).splitlines()[0]}") from err
    return SavedModel(net, str(file), kind)


def check_output_shape(classifier: nn.Module, channels: int, image_size: int, num_classes: int, name: str) -> None:
    """One forward pass of two blank images: a model that does not take this dataset's images or
    does not give one logit per class is a ConfigError now, before any run."""
    try:
        with torch.no_grad():
            logits = classifier(torch.zeros(2, channels, image_size, image_size))
    except Exception as err:
        raise ConfigError(f"model={name} does not take this dataset's {channels}x{image_size}x{image_size} "
                          f"images: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if tuple(logits.shape) != (2, num_classes):
        raise ConfigError(f"model={name} gives outputs of shape {tuple(logits.shape)} for 2 images; this "
                          f"dataset needs (2, {num_classes}) logits")
