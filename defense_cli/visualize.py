"""The PNG grid logged with every run: clean / adversarial / defended samples with predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


ROW_TITLES = {"clean": "clean", "adversarial": "adversarial", "defended": "defended adv."}


def sample_grid(samples: dict[str, torch.Tensor], predictions: dict[str, torch.Tensor],
                labels: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
    """Save a 3-row grid (clean, adversarial, defended) titled with predicted labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tuple(ROW_TITLES)
    count = min(len(labels), len(samples["clean"]))
    fig, axes = plt.subplots(len(rows), max(count, 1), figsize=(1.6 * max(count, 1), 5.2), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(count):
            ax = axes[r][c]
            image = samples[row][c].permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            predicted = int(predictions[row][c])
            ok = predicted == int(labels[c])
            ax.set_title(f"{classes[predicted]}", fontsize=8, color="green" if ok else "red")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(ROW_TITLES[row], fontsize=9)
    fig.suptitle("prediction per image (green: correct)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
