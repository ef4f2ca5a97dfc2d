"""Reference JPEG: PIL, one image at a time."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from defense_cli.bench.references import reference


@reference("jpeg")
def jpeg_with_pil(images: torch.Tensor, defense) -> torch.Tensor:
    out = []
    for image in images.cpu():
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(
            buffer, format="JPEG", quality=defense.quality)
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255
        out.append(torch.from_numpy(decoded.reshape(array.shape)).permute(2, 0, 1))
    return torch.stack(out).to(images.device)
