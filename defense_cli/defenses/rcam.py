"""Robust activation map, R-CAM (`002_fc3b45851f5789b0.txt`, ch. 4, section 4.6.1, eq. 4.4-4.5).

The class activation map of class c is M_c(x, y) = sum_k w_k^c f_k(x, y) (eq. 4.4, Zhou et al.
2016): f are the last convolutional feature maps and w^c the row of the linear layer that follows
global average pooling. R-CAM is the exponentially weighted sum of the maps of the top-k classes,
M(x, y) = sum_{i=1..k} M_{c_i}(x, y) / 2^i (eq. 4.5), normalised to [0, 1] per image.

What a model must expose: `supports_cam`, `features(x)` and a linear `head`
(`defense_cli.models.Classifier` has them for small_cnn, resnet18 and vgg16_bn).

Choices where the text is silent or loose:
- normalisation: the thesis divides by the maximum, which only gives [0, 1] for a non-negative map;
  a CAM can be negative, so the map is min-max normalised (a constant map becomes 0: no preference);
- the map (h, w) is brought to the image size (H, W) by bilinear interpolation (as for CAMs);
- the top-k classes are those of the logits computed from the same features (one forward pass);
  k is capped at the number of classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from defense_cli.models.inference_features import inference_features


def check_cam_model(classifier: nn.Module | None) -> None:
    """ValueError unless `classifier` exposes `features(x)` and a linear `head` (R-CAM's needs)."""
    if classifier is None:
        raise ValueError("rcam=true needs a classifier (context.classifier is None); "
                         "set rcam=false to deflect pixels uniformly")
    if not getattr(classifier, "supports_cam", False):
        name = type(getattr(classifier, "backbone", classifier)).__name__
        raise ValueError(f"rcam=true needs a model with `features(x)` and a linear `head` after global average "
                         f"pooling (supports_cam); model {name} has none: use small_cnn, resnet18 or vgg16_bn, "
                         f"or set rcam=false")


def class_activation_maps(features: torch.Tensor, head: nn.Linear, classes: torch.Tensor) -> torch.Tensor:
    """M_c (eq. 4.4) for the classes (B, k) of each image: (B, k, h, w), without the head's bias."""
    weights = head.weight[classes]
    return torch.einsum("bkc,bchw->bkhw", weights, features)


def robust_activation_map(classifier: nn.Module, images: torch.Tensor, top_k: int = 5) -> torch.Tensor:
    """R-CAM of a (B, C, H, W) batch in [0, 1]: (B, H, W) in [0, 1], high where the classes of interest are."""
    check_cam_model(classifier)
    parameter = next(classifier.parameters(), None)
    model_device = parameter.device if parameter is not None else images.device
    with torch.no_grad():
        features = inference_features(classifier, images.to(model_device))
        logits = classifier.head(features.mean(dim=(2, 3)))
        k = min(top_k, logits.shape[1])
        classes = logits.topk(k, dim=1).indices
        maps = class_activation_maps(features, classifier.head, classes)
        decay = 0.5 ** torch.arange(1, k + 1, device=maps.device, dtype=maps.dtype)
        combined = torch.einsum("bkhw,k->bhw", maps, decay)
    return normalise_map(combined, images.shape[-2:]).to(images.device)


def normalise_map(maps: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Min-max normalise each (h, w) map of (B, h, w) to [0, 1] and resize it bilinearly to `size`."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    spread = maps.amax(dim=(1, 2), keepdim=True) - low
    normalised = torch.where(spread > 0, (maps - low) / spread.clamp(min=torch.finfo(maps.dtype).tiny),
                             torch.zeros_like(maps))
    resized = F.interpolate(normalised.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)
    return resized.squeeze(1).clamp_(0, 1)
