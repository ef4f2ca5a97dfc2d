"""LRC-HSP: low-rank completion of high-sensitivity points, `000_1720f31fb7e6036a.txt` ch. 3.

1. Keypoints (section 3.3, eq. 3.10): the magnitude of the input gradient of the classifier's
   cross-entropy loss at each pixel; the top `keypoint_share` of the H x W pixel locations (5% in
   section 3.5.3) form the mask M, shared by all channels.
2. Low-sensitivity pixels (section 3.4): TV-norm smoothing by FGP (Beck and Teboulle [27]).
3. Keypoints (section 3.4): Reweighted Low-rank Keypoints Completion, Algorithms 2 and 3
   (`rlkc.py`), lambda = 8, eta = 0.2, one matrix per channel.

The output takes the keypoints from RLKC and every other pixel from the TV-smoothed image.

Readings of the text (each one a parameter):
- Eq. 3.10 uses the loss towards the attacker's label t', unknown to a defense: `keypoint_label`
  picks the label of the loss, `predicted` (the classifier's own prediction; default) or
  `least_likely` (the least likely class, a stand-in for a target label). The gradient magnitude
  of a pixel is the L2 norm of the gradient over its channels.
- The TV smoothing weight of the low-sensitivity pixels is not given: `smoothing_weight` = 0.1
  in ||x - b||^2 + 2 weight TV(x) (the default weight of Chambolle's denoiser in scikit-image).
- RLKC completes the keypoints from the input image (X^a of eq. 3.11), not from the smoothed one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from defense_cli.defenses.base import Defense, DefenseContext
from defense_cli.parameter_checks import check_int
from defense_cli.defenses.rlkc import RLKCParams, rlkc
from defense_cli.defenses.tv import fgp_denoise

KEYPOINT_LABELS = ("predicted", "least_likely")


def keypoint_mask(classifier: nn.Module, images: torch.Tensor, share: float,
                  label: str = "predicted") -> torch.Tensor:
    """Eq. 3.10: boolean (B, 1, H, W) mask of the round(share * H * W) pixels of largest gradient norm.

    The gradient is that of the cross-entropy of the classifier's logits towards `label`
    (see the module docstring), taken per image (summed loss), with autograd even under no_grad.
    """
    b, _, h, w = images.shape
    count = max(1, round(share * h * w))
    with torch.enable_grad():
        inputs = images.detach().clone().requires_grad_(True)
        logits = classifier(inputs)
        target = logits.argmax(dim=1) if label == "predicted" else logits.argmin(dim=1)
        loss = F.cross_entropy(logits, target.detach(), reduction="sum")
        (gradient,) = torch.autograd.grad(loss, inputs)
    magnitude = gradient.norm(dim=1).flatten(1)
    chosen = magnitude.topk(count, dim=1).indices
    mask = torch.zeros_like(magnitude, dtype=torch.bool).scatter_(1, chosen, True)
    return mask.view(b, 1, h, w)


class LRCHSP(Defense):
    """LRC-HSP (see the module docstring): gradient keypoints, TV smoothing, RLKC completion.

    keypoint_share: share of pixel locations taken as keypoints, in (0, 1] (paper: 0.05).
    keypoint_label: `predicted` or `least_likely`, the label of the loss of eq. 3.10.
    smoothing_weight: FGP weight of the TV smoothing of low-sensitivity pixels (>= 0).
    smoothing_iterations: FGP iterations of that smoothing.
    The other arguments are the fields of `RLKCParams` (Algorithms 2 and 3).
    """

    needs_classifier = True

    def __init__(self, keypoint_share: float = 0.05, keypoint_label: str = "predicted",
                 smoothing_weight: float = 0.1, smoothing_iterations: int = 50, **rlkc_params: Any) -> None:
        if not 0 < keypoint_share <= 1:
            raise ValueError(f"keypoint_share={keypoint_share!r} must lie in (0, 1]")
        if keypoint_label not in KEYPOINT_LABELS:
            raise ValueError(f"keypoint_label={keypoint_label!r} must be one of {', '.join(KEYPOINT_LABELS)}")
        if not smoothing_weight >= 0:
            raise ValueError(f"smoothing_weight={smoothing_weight!r} must be >= 0")
        check_int("smoothing_iterations", smoothing_iterations, 1)
        unknown = set(rlkc_params) - set(RLKCParams.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown LRC-HSP parameter(s) {sorted(unknown)}; allowed: "
                             f"{', '.join(RLKCParams.__dataclass_fields__)}")
        self.keypoint_share = float(keypoint_share)
        self.keypoint_label = keypoint_label
        self.smoothing_weight = float(smoothing_weight)
        self.smoothing_iterations = smoothing_iterations
        self.rlkc_params = RLKCParams(**rlkc_params)
        self._classifier: nn.Module | None = None

    def prepare(self, context: DefenseContext) -> None:
        if context.classifier is None:
            raise ValueError("LRC-HSP needs the classifier (context.classifier is None): its keypoints "
                             "are the pixels of largest input gradient (eq. 3.10)")
        self._classifier = context.classifier

    def keypoints(self, images: torch.Tensor) -> torch.Tensor:
        """The keypoint mask M of eq. 3.10 for a batch, shape (B, 1, H, W)."""
        if self._classifier is None:
            raise ValueError("LRC-HSP needs the classifier: call prepare(DefenseContext(classifier=...)) first")
        return keypoint_mask(self._classifier, images, self.keypoint_share, self.keypoint_label)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        keypoints = self.keypoints(images)
        smoothed = fgp_denoise(images, self.smoothing_weight, self.smoothing_iterations,
                               self.rlkc_params.isotropic_tv)
        completed = rlkc(images, keypoints, self.rlkc_params)
        return torch.where(keypoints, completed, smoothed)
