"""Fast gradient-free `features(x)` for the class-activation-map defenses (R-CAM, Aug-MSROI).

Pixel deflection's R-CAM and semantic JPEG's saliency (`002_fc3b45851f5789b0.txt` ch. 2-4) run the
classifier's last conv features, without gradients, over every image they defend (semantic JPEG
over 5 jittered copies of each). On the CPU that forward is most of their time. Three things make
it about 3x faster there (small_cnn, 2,560 CIFAR-10 copies on the 2-core CPU: 1.1 s -> 0.3-0.4 s)
and change the features only by float rounding (max |diff| about 1e-5):
- batch norm folded into the convolution before it (`torch.fx.experimental.optimization.fuse`),
  which is exact in eval mode only, so a model in training mode takes the plain path;
- channels-last tensors, oneDNN's native layout;
- `CPU_CHUNK` images at a time on the CPU, so that activations stay in the cache.
The folded copy is kept per model and rebuilt when any parameter or buffer changes (an optimiser
step or `load_state_dict` bumps the tensors' version counters; `.to(device)` changes their storage).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

#: Images per forward call on the CPU (measured best of 16..128 for small_cnn and resnet18).
CPU_CHUNK = 32

_folded: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()
_folding = threading.Lock()  # defenses call this from several threads at once


def _weights_fingerprint(classifier: nn.Module) -> tuple:
    tensors = list(classifier.parameters()) + list(classifier.buffers())
    return tuple((t.data_ptr(), t._version, t.device) for t in tensors)


def folded_features(classifier: nn.Module) -> nn.Module:
    """The classifier's feature extractor with batch norm folded into the convolutions (cached)."""
    fingerprint = _weights_fingerprint(classifier)
    with _folding:
        cached = _folded.get(classifier)
        if cached is None or cached[0] != fingerprint:
            module = fuse(classifier.backbone.features).eval()
            module.requires_grad_(False)
            cached = (fingerprint, module)
            _folded[classifier] = cached
    return cached[1]


def inference_features(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`classifier.features(images)` without gradients, computed the fast way when the model is in eval mode
    (then in channels-last memory layout)."""
    with torch.no_grad():
        if classifier.training or not classifier.supports_cam:  # the plain path names the problem
            return classifier.features(images)
        features = folded_features(classifier)
        chunk = CPU_CHUNK if images.device.type == "cpu" else len(images)
        parts = [features(classifier.normalize(part).contiguous(memory_format=torch.channels_last))
                 for part in images.split(max(chunk, 1))]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
