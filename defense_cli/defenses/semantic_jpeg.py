"""Semantic JPEG with an augmented region-of-interest map (Aug-MSROI), `002_fc3b45851f5789b0.txt`.

Chapter 2, section 2.4 and Algorithm 1: a saliency map in [0, 1] is discretised into k levels (the
lowest level holds saliency in [0, 1/k], level n holds (n/k, (n+1)/k]); level n is encoded with
JPEG at quality Q_n = Q_l + n (Q_h - Q_l) / k (eq. 2.7); every 8x8 block of the output is taken from
the JPEG of its level, and the mosaic is encoded once more at the final quality Q_f.
Chapter 3, sections 3.5-3.6: the map is averaged over several randomly perturbed copies of the
input (Aug-MSROI), so that the adversary's class dominates it less.

Substitution (documented choice): the paper's MS-ROI network (eq. 2.4-2.5, per-class feature maps,
trained on Caltech-256) is not available here. The map is built from the defended classifier's
own class activation maps (eq. 2.2; `Classifier.features` + `Classifier.head`), as MS-ROI does in
practice (section 2.3: "argsort Z and pick the top five classes and combine them via a sum
weighted by their rank"): the CAMs of the `top_classes` highest-scoring classes, weighted 1/2^i by
rank i (the weighting of eq. 4.5), negative evidence clipped to 0, normalised by the maximum.

Augmentation (section 3.6, eq. for M~): each of `augmentations` copies is shifted by a random
integer offset of at most `jitter` pixels (border replicated, the map shifted back), gets Gaussian
pixel noise of std `image_noise`, and Gaussian noise of std `feature_noise` x (std of the copy's
features) on the last convolutional activations; the per-copy maps are averaged and renormalised.

Quality spacing (documented choice): eq. 2.7 with n = 0..k-1 gives 30, 38, 46, 54, 62 for the
section 2.5 setting (k = 5, Q_l = 30, Q_h = 70), while section 2.5 says "increments of ten from
Q_l = 30 to Q_h = 70"; `quality_spacing: equation` follows eq. 2.7, `inclusive` spreads the k
qualities from Q_l to Q_h inclusive (30, 40, ..., 70).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from defense_cli.defenses.base import Defense, DefenseContext
from defense_cli.defenses.cpu_threads import map_in_cache_sized_chunks
from defense_cli.defenses.jpeg import jpeg_roundtrip
from defense_cli.parameter_checks import check_int
from defense_cli.models.inference_features import inference_features

BLOCK = 8
QUALITY_SPACINGS = ("equation", "inclusive")
#: Images defended per chunk on the CPU (measured best of 4, 8, 16, 32 on the 2-core CPU).
CPU_CHUNK_IMAGES = 16


def level_qualities(quality_low: int, quality_high: int, levels: int, spacing: str) -> list[int]:
    """The JPEG quality of each saliency level n = 0..k-1 (eq. 2.7, or inclusive spacing)."""
    step_count = levels if spacing == "equation" else max(levels - 1, 1)
    return [round(quality_low + n * (quality_high - quality_low) / step_count) for n in range(levels)]


def saliency_levels(saliency: torch.Tensor, levels: int) -> torch.Tensor:
    """Level (B, 1, ceil(H/8), ceil(W/8)) of each 8x8 block from its mean saliency in [0, 1].

    Level 0 holds [0, 1/k], level n holds (n/k, (n+1)/k] (section 2.4).
    """
    block_saliency = F.avg_pool2d(saliency, BLOCK, ceil_mode=True)
    return (torch.ceil(block_saliency * levels) - 1).clamp_(0, levels - 1).long()


def semantic_jpeg(images: torch.Tensor, saliency: torch.Tensor, qualities: list[int],
                  final_quality: int) -> torch.Tensor:
    """Algorithm 1: per-block quality chosen by saliency level, mosaic re-encoded at `final_quality`.

    `saliency` is (B, 1, H, W) in [0, 1]; `qualities[n]` is the quality of level n. The batch is
    encoded once per quality and blocks are picked by a gather over the stack of decoded images.
    """
    batch, channels, height, width = images.shape
    levels = saliency_levels(saliency, len(qualities))
    per_pixel = levels.repeat_interleave(BLOCK, 2).repeat_interleave(BLOCK, 3)[:, :, :height, :width]
    decoded = torch.stack([jpeg_roundtrip(images, quality) for quality in qualities])
    index = per_pixel.expand(batch, channels, height, width).unsqueeze(0)
    mosaic = decoded.gather(0, index).squeeze(0)
    return jpeg_roundtrip(mosaic, final_quality)


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = images[..., i + dy, j + dx] per image (integer shifts (N, 2)), border replicated.

    Two gathers (rows, then columns) with clamped indices.
    """
    count, channels, height, width = images.shape
    rows = (torch.arange(height, device=images.device) + shifts[:, :1]).clamp_(0, height - 1)
    cols = (torch.arange(width, device=images.device) + shifts[:, 1:]).clamp_(0, width - 1)
    shifted = images.gather(2, rows[:, None, :, None].expand(count, channels, height, width))
    return shifted.gather(3, cols[:, None, None, :].expand(count, channels, height, width))


def normalise_by_max(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map (N, 1, H, W) by its maximum (all-zero maps stay zero)."""
    peak = maps.flatten(1).amax(1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / peak[:, None, None, None]


def per_item_std(values: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation of each item of a batch, two-pass (torch.std on the CPU is ~20x slower)."""
    flat = values.flatten(1)
    centred = flat - flat.mean(1, keepdim=True)
    return centred.pow_(2).sum(1).div_(max(flat.shape[1] - 1, 1)).sqrt_()


def rank_weighted_cam(classifier, images: torch.Tensor, top_classes: int, feature_noise: float,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Sum over the top-k classes of CAM_c / 2^i (eq. 2.2, 4.5), clipped at 0, at feature resolution.

    With `feature_noise` > 0, Gaussian noise scaled by each image's feature std is added to the last
    conv activations first (the perturbation of intermediate activations of section 3.6).
    """
    features = inference_features(classifier, images)
    if feature_noise > 0:
        noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
        scale = feature_noise * per_item_std(features)[:, None, None, None]
        features = features.addcmul_(scale, noise)
    head = classifier.head
    logits = head(features.mean(dim=(2, 3)))
    top = logits.topk(min(top_classes, logits.shape[1]), dim=1).indices
    rank_weights = 0.5 ** torch.arange(top.shape[1], device=images.device, dtype=features.dtype)
    class_weights = (head.weight[top] * rank_weights[None, :, None]).sum(1)  # (N, D)
    return torch.einsum("nd,ndhw->nhw", class_weights, features).clamp_min(0).unsqueeze(1)


def aug_msroi_saliency(classifier, images: torch.Tensor, augmentations: int, jitter: int, image_noise: float,
                       feature_noise: float, top_classes: int, generator: torch.Generator | None) -> torch.Tensor:
    """Aug-MSROI map (B, 1, H, W) in [0, 1]: rank-weighted CAMs averaged over perturbed copies."""
    batch, _, height, width = images.shape
    copies = images.repeat(augmentations, 1, 1, 1)
    shifts = torch.randint(-jitter, jitter + 1, (len(copies), 2), generator=generator, device=images.device)
    noise = torch.randn(copies.shape, generator=generator, device=images.device, dtype=images.dtype)
    perturbed = translate(copies, shifts).add_(noise, alpha=image_noise).clamp_(0, 1)
    cams = rank_weighted_cam(classifier, perturbed, top_classes, feature_noise, generator)
    maps = F.interpolate(cams, size=(height, width), mode="bilinear", align_corners=False)
    maps = translate(normalise_by_max(maps), -shifts)
    return normalise_by_max(maps.reshape(augmentations, batch, 1, height, width).mean(0))


def check_quality(name: str, value: int) -> None:
    if not isinstance(value, int) or not 1 <= value <= 100:
        raise ValueError(f"{name}={value!r} must be an integer JPEG quality in 1..100")


class SemanticJPEG(Defense):
    """Aug-MSROI semantic JPEG (002 ch. 2 Algorithm 1, eq. 2.7; ch. 3 section 3.6); see the module doc."""

    randomized = True
    needs_classifier = True

    def __init__(self, quality_low: int = 30, quality_high: int = 70, levels: int = 5, final_quality: int = 70,
                 quality_spacing: str = "equation", augmentations: int = 5, jitter: int = 2,
                 image_noise: float = 0.02, feature_noise: float = 0.1, top_classes: int = 5) -> None:
        for name, value in (("quality_low", quality_low), ("quality_high", quality_high),
                            ("final_quality", final_quality)):
            check_quality(name, value)
        if quality_low > quality_high:
            raise ValueError(f"quality_low={quality_low} must not exceed quality_high={quality_high}")
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels={levels!r} (k) must be an integer >= 1")
        if quality_spacing not in QUALITY_SPACINGS:
            raise ValueError(f"quality_spacing={quality_spacing!r}; allowed: {', '.join(QUALITY_SPACINGS)}")
        check_int("augmentations", augmentations, 1)
        if not isinstance(jitter, int) or jitter < 0:
            raise ValueError(f"jitter={jitter!r} must be an integer >= 0 (pixels)")
        if image_noise < 0 or feature_noise < 0:
            raise ValueError(f"image_noise={image_noise!r} and feature_noise={feature_noise!r} must be >= 0")
        check_int("top_classes", top_classes, 1)
        self.quality_low = quality_low
        self.quality_high = quality_high
        self.levels = levels
        self.final_quality = final_quality
        self.quality_spacing = quality_spacing
        self.augmentations = augmentations
        self.jitter = jitter
        self.image_noise = image_noise
        self.feature_noise = feature_noise
        self.top_classes = top_classes
        self._classifier = None

    @property
    def qualities(self) -> list[int]:
        return level_qualities(self.quality_low, self.quality_high, self.levels, self.quality_spacing)

    def prepare(self, context: DefenseContext) -> None:
        classifier = context.classifier
        if classifier is None:
            raise ValueError("semantic_jpeg needs the classifier's class activation maps: context.classifier is None")
        if not classifier.supports_cam:
            raise ValueError(f"semantic_jpeg needs a model with CAM features (`features` + linear `head`); model "
                             f"{type(classifier.backbone).__name__} has none: use small_cnn, resnet18 or vgg16_bn")
        self._classifier = classifier.eval()

    def saliency(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The Aug-MSROI map (B, 1, H, W) in [0, 1] of a batch."""
        return self._per_chunk(images, generator, self.batch_saliency)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        def defend(part: torch.Tensor, part_generator: torch.Generator) -> torch.Tensor:
            return semantic_jpeg(part, self.batch_saliency(part, part_generator), self.qualities, self.final_quality)

        return self._per_chunk(images, generator, defend)

    def batch_saliency(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The Aug-MSROI map of a batch in one call (no chunks, no threads; what `saliency` runs per chunk)."""
        if self._classifier is None:
            raise ValueError("semantic_jpeg has no classifier: call prepare(context) with context.classifier")
        return aug_msroi_saliency(self._classifier, images, self.augmentations, self.jitter, self.image_noise,
                                  self.feature_noise, self.top_classes, generator)

    @staticmethod
    def _per_chunk(images: torch.Tensor, generator: torch.Generator | None, fn) -> torch.Tensor:
        """fn(chunk, chunk_generator) on chunks of `CPU_CHUNK_IMAGES` images spread over threads
        (`map_in_cache_sized_chunks`; one call on CUDA), without gradients.

        A chunk draws from its own generator, seeded by the draw that `generator` makes for the
        chunk's first image, so that the output does not depend on the thread count.
        """
        seeds = torch.randint(2**62, (len(images),), generator=generator, device=images.device).tolist()

        def run(index: torch.Tensor) -> torch.Tensor:
            chunk_generator = torch.Generator(device=images.device).manual_seed(seeds[int(index[0])])
            with torch.no_grad():
                return fn(images[index], chunk_generator)

        return map_in_cache_sized_chunks(run, torch.arange(len(images), device=images.device), CPU_CHUNK_IMAGES)
