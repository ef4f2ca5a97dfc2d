"""The stratification of STL (`004_bd3ac3fe115e93bb.txt` section 3.4, section 5.1).

A denoising autoencoder (DAE) is trained on clean training images and their Gaussian-noised
versions, at 32 x 32 ("we first downsample images to 32x32 to train a DAE"); k-means (k-means++
seeding, the paper's [14]) clusters the training images' latent codes; a new image is assigned the
cluster that wins the vote of its k nearest training latents. The architecture of the DAE is not
given in the paper: two strided 3x3 conv layers and a linear layer to a `latent_dim` code, mirrored
by the decoder (a documented choice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DAE_SIZE = 32


class DenoisingAutoencoder(nn.Module):
    """conv(16, s2) -> conv(32, s2) -> linear(latent) and back; images are resized to 32 x 32."""

    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__()
        hidden = 32 * (DAE_SIZE // 4) ** 2
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(hidden, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Unflatten(1, (32, DAE_SIZE // 4, DAE_SIZE // 4)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(16, channels, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    @staticmethod
    def resize(images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] == (DAE_SIZE, DAE_SIZE):
            return images
        return F.interpolate(images, size=(DAE_SIZE, DAE_SIZE), mode="bilinear", align_corners=False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.resize(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(images))


def train_dae(images: torch.Tensor, latent_dim: int, noise_std: float, epochs: int, seed: int,
              batch_size: int = 128, learning_rate: float = 1e-3) -> DenoisingAutoencoder:
    """Fit a DAE to map clean and noised images (N, C, H, W) to the clean 32 x 32 image (MSE, Adam)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DenoisingAutoencoder(images.shape[1], latent_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    targets = DenoisingAutoencoder.resize(images)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start:start + batch_size]
            clean = images[index]
            noisy = (clean + noise_std * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
            loss = F.mse_loss(model(torch.cat([clean, noisy])), targets[index].repeat(2, 1, 1, 1))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def kmeans(points: torch.Tensor, clusters: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster labels (N,) of points (N, D): k-means++ seeding, then Lloyd iterations."""
    centres = points[torch.randint(len(points), (1,), generator=generator)]
    for _ in range(1, clusters):
        distances = torch.cdist(points, centres).min(dim=1).values.pow(2)
        weights = distances if distances.sum() > 0 else torch.ones_like(distances)
        centres = torch.cat([centres, points[torch.multinomial(weights, 1, generator=generator)]])
    labels = torch.cdist(points, centres).argmin(dim=1)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=clusters).to(points.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, points)
        occupied = counts > 0
        centres[occupied] = sums[occupied] / counts[occupied, None]
        labels = torch.cdist(points, centres).argmin(dim=1)
    return labels


def knn_vote(queries: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, neighbors: int,
             clusters: int) -> torch.Tensor:
    """The label most common among each query's k nearest points (ties: the smallest label)."""
    nearest = torch.cdist(queries, points).topk(min(neighbors, len(points)), dim=1, largest=False).indices
    votes = F.one_hot(labels[nearest], clusters).sum(dim=1)
    return votes.argmax(dim=1)
