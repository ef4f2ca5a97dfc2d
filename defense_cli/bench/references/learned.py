"""Reference versions of semantic JPEG, STL and quilting: the same algorithms, one image at a time.

Semantic JPEG: the saliency of each image alone (`SemanticJPEG.batch_saliency`, with the same
folded inference features, on a batch of one image's copies), PIL JPEG per quality and a Python
loop over 8x8 blocks. STL: the same ADMM in numpy (numpy FFTs), one image at a time, as a SPORCO-style per-image
solver would run. Quilting: a Python loop over tiles, each searched with numpy against the database.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from defense_cli.bench.references import reference
from defense_cli.bench.references.jpeg import jpeg_with_pil
from defense_cli.defenses.semantic_jpeg import BLOCK, saliency_levels


def _pil_jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    return jpeg_with_pil(image[None], SimpleNamespace(quality=quality))[0]


@reference("semantic_jpeg")
def semantic_jpeg_per_image(images: torch.Tensor, defense) -> torch.Tensor:
    generator = torch.Generator(device=images.device).manual_seed(0)
    out = []
    for image in images:
        with torch.no_grad():
            saliency = defense.batch_saliency(image[None], generator)
        levels = saliency_levels(saliency, defense.levels)[0, 0]
        decoded = [_pil_jpeg(image.cpu(), quality) for quality in defense.qualities]
        mosaic = torch.empty_like(image.cpu())
        for row in range(levels.shape[0]):
            for col in range(levels.shape[1]):
                block = (slice(None), slice(row * BLOCK, (row + 1) * BLOCK), slice(col * BLOCK, (col + 1) * BLOCK))
                mosaic[block] = decoded[int(levels[row, col])][block]
        out.append(_pil_jpeg(mosaic, defense.final_quality))
    return torch.stack(out).to(images.device)


def _cbpdn_numpy(filters: np.ndarray, signal: np.ndarray, lmbda: float, rho: float, iterations: int) -> np.ndarray:
    """Sparse reconstruction of one signal (C, H, W) with filters (K, C, S, S): ADMM, numpy FFTs."""
    size = signal.shape[-2:]
    d = np.fft.rfft2(filters, s=size)                                   # (K, C, H, Wf)
    s = np.fft.rfft2(signal)                                            # (C, H, Wf)
    gram = np.einsum("kchw,kdhw->hwcd", d, d.conj())
    woodbury = np.linalg.inv(gram + rho * np.eye(signal.shape[0]))      # (H, Wf, C, C)

    def correction(z):  # D^H W D z
        dz = np.einsum("kchw,khw->chw", d, z)
        return np.einsum("kchw,chw->khw", d.conj(), np.einsum("hwcd,dhw->chw", woodbury, dz))

    data = np.einsum("kchw,chw->khw", d.conj(), s)
    base = np.fft.irfft2((data - correction(data)) / rho, s=size)
    y = np.zeros_like(base)
    u = np.zeros_like(base)
    for _ in range(iterations):
        w = y - u
        z = base + w - np.fft.irfft2(correction(np.fft.rfft2(w)), s=size)
        v = z + u
        y = np.sign(v) * np.maximum(np.abs(v) - lmbda / rho, 0)
        u = v - y
    return np.fft.irfft2(np.einsum("kchw,khw->chw", d, np.fft.rfft2(y)), s=size)


@reference("stl")
def stl_per_image_numpy(images: torch.Tensor, defense) -> torch.Tensor:
    out = []
    pad = defense.filter_size
    for image in images:
        smooth, detail = defense.split(image[None].float())
        cluster = int(defense.assign_clusters(image[None].float())[0])
        filters = defense._dictionaries[cluster].cpu().double().numpy()
        sparse = _cbpdn_numpy(filters, detail[0].cpu().double().numpy(), defense.lmbda, defense.admm_rho,
                              defense.iterations)
        full = smooth[0].cpu() + torch.from_numpy(sparse).float()
        out.append(full[:, pad:pad + image.shape[-2], pad:pad + image.shape[-1]].clamp(0, 1))
    return torch.stack(out).to(images.device)


@reference("stl_stratified")
def stl_stratified_per_image_numpy(images: torch.Tensor, defense) -> torch.Tensor:
    return stl_per_image_numpy(images, defense)


@reference("quilting")
def quilting_per_tile_numpy(images: torch.Tensor, defense) -> torch.Tensor:
    rng = np.random.default_rng(0)
    database = defense._database.cpu().numpy()
    flat = database.reshape(len(database), -1)
    p, stride = defense.patch_size, defense.patch_size - defense.overlap
    out = []
    for image in images.cpu().numpy():
        channels, height, width = image.shape
        rows = max(1, -(-(height - p) // stride) + 1)
        cols = max(1, -(-(width - p) // stride) + 1)
        ph, pw = (rows - 1) * stride + p, (cols - 1) * stride + p
        padded = np.pad(image, ((0, 0), (0, ph - height), (0, pw - width)), mode="edge")
        total = np.zeros_like(padded)
        count = np.zeros_like(padded)
        for r in range(rows):
            for c in range(cols):
                window = (slice(None), slice(r * stride, r * stride + p), slice(c * stride, c * stride + p))
                distances = ((flat - padded[window].reshape(-1)) ** 2).sum(1)
                nearest = np.argpartition(distances, defense.neighbors - 1)[:defense.neighbors]
                total[window] += database[rng.choice(nearest)]
                count[window] += 1
        out.append(torch.from_numpy(total / count)[:, :height, :width])
    return torch.stack(out).float().to(images.device)
