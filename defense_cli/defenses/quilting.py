"""Image quilting as a defense (Guo, Rana, Cisse and van der Maaten, "Countering adversarial images
using input transformations", ICLR 2018, section 3; after Efros and Freeman 2001).

That paper is not in `shared/papers/`; it is the quilting baseline of `002_fc3b45851f5789b0.txt`
section 4.4 and of `004_bd3ac3fe115e93bb.txt` Tables 2, 3, 6 and 7. The method: collect a database
of patches from clean training images; cut the input into tiles; replace each tile by a patch drawn
at random among its `neighbors` nearest database patches (Euclidean distance). Guo et al. use a
database of one million ImageNet patches, 5x5 patches and K = 10 neighbours.

Choices where the description is silent (config values):
- Tiles lie on a grid with stride `patch_size - overlap`; the image is replicate-padded up to the
  grid and cropped back. Each tile is matched on its own content (not on the patches already placed,
  as the sequential Efros-Freeman search does), so all tiles of all images are searched at once.
- Overlapping tiles are blended by averaging (uniform weights over the overlap), not min-cut: the
  min-cut is a sequential dynamic programme per seam. With `overlap = 0` every output tile is
  exactly one database patch.
- The database holds `database_size` patches cut at random positions (under the run's seed) from
  the first `train_images` training images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from defense_cli.defenses.base import Defense, DefenseContext
from defense_cli.defenses.fitted import fit_once, random_patches, training_images
from defense_cli.parameter_checks import check_int

QUERY_CHUNK = 512  # tiles searched per distance matrix (bounds memory: chunk x database floats)


def tile_grid(size: int, patch_size: int, stride: int) -> int:
    """Number of tiles along a side of `size` pixels (the last one may reach past the edge)."""
    return max(1, -(-(size - patch_size) // stride) + 1)


def nearest_random_choice(queries: torch.Tensor, database: torch.Tensor, neighbors: int,
                          generator: torch.Generator) -> torch.Tensor:
    """For each query row, the index of a database row drawn uniformly among its k nearest."""
    picks = torch.randint(neighbors, (len(queries),), generator=generator, device=generator.device)
    picks = picks.to(queries.device)
    db_norms = database.pow(2).sum(1)
    chosen = []
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = queries[start:start + QUERY_CHUNK]
        # squared distances up to the per-query constant |q|^2: |d|^2 - 2 q.d
        distances = torch.addmm(db_norms[None, :], chunk, database.T, alpha=-2)
        nearest = distances.topk(neighbors, dim=1, largest=False).indices
        chosen.append(nearest.gather(1, picks[start:start + QUERY_CHUNK, None]).squeeze(1))
    return torch.cat(chosen)


def quilt(images: torch.Tensor, database: torch.Tensor, neighbors: int, overlap: int,
          generator: torch.Generator) -> torch.Tensor:
    """Replace every tile of the batch by a random one of its k nearest database patches."""
    batch, channels, height, width = images.shape
    patch_size = database.shape[-1]
    stride = patch_size - overlap
    rows, cols = tile_grid(height, patch_size, stride), tile_grid(width, patch_size, stride)
    padded_h, padded_w = (rows - 1) * stride + patch_size, (cols - 1) * stride + patch_size
    padded = F.pad(images, (0, padded_w - width, 0, padded_h - height), mode="replicate")
    tiles = F.unfold(padded, patch_size, stride=stride)  # (B, C*p*p, T)
    queries = tiles.transpose(1, 2).reshape(-1, tiles.shape[1])
    flat_db = database.flatten(1)
    replaced = flat_db[nearest_random_choice(queries, flat_db, neighbors, generator)]
    replaced = replaced.reshape(batch, -1, tiles.shape[1]).transpose(1, 2)
    size = (padded_h, padded_w)
    summed = F.fold(replaced, size, patch_size, stride=stride)
    counts = F.fold(torch.ones_like(replaced[:1]), size, patch_size, stride=stride)
    return (summed / counts)[:, :, :height, :width]


class Quilting(Defense):
    """Image quilting (Guo et al. 2018): tiles replaced by random near neighbours from clean patches."""

    randomized = True
    needs_train_set = True

    def __init__(self, patch_size: int = 5, overlap: int = 1, neighbors: int = 10,
                 database_size: int = 100_000, train_images: int = 10_000) -> None:
        check_int("patch_size", patch_size, 1)
        if not isinstance(overlap, int) or not 0 <= overlap < patch_size:
            raise ValueError(f"overlap={overlap!r} must be an integer in 0..patch_size-1 ({patch_size - 1})")
        if not isinstance(neighbors, int) or neighbors < 1:
            raise ValueError(f"neighbors={neighbors!r} must be an integer >= 1 (k nearest patches)")
        if not isinstance(database_size, int) or database_size < neighbors:
            raise ValueError(f"database_size={database_size!r} must be an integer >= neighbors ({neighbors})")
        check_int("train_images", train_images, 1)
        self.patch_size = patch_size
        self.overlap = overlap
        self.neighbors = neighbors
        self.database_size = database_size
        self.train_images = train_images
        self._database: torch.Tensor | None = None

    def prepare(self, context: DefenseContext) -> None:
        images = training_images(context, self.train_images, "quilting")
        if min(images.shape[-2:]) < self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} is larger than the training images "
                             f"{tuple(images.shape[-2:])}")
        parameters = {"patch_size": self.patch_size, "database_size": self.database_size}

        def fit() -> dict[str, torch.Tensor]:
            generator = torch.Generator().manual_seed(context.seed)
            return {"patches": random_patches(images, self.patch_size, self.database_size, generator)}

        self.set_database(fit_once(context, "quilting", images, parameters, fit)["patches"].to(context.device))

    def set_database(self, patches: torch.Tensor) -> None:
        """Use `patches` (N, C, p, p) in [0, 1] as the database (what `prepare` builds)."""
        if patches.ndim != 4 or patches.shape[-1] != self.patch_size or patches.shape[-2] != self.patch_size:
            raise ValueError(f"database patches must be (N, C, {self.patch_size}, {self.patch_size}), "
                             f"got {tuple(patches.shape)}")
        if len(patches) < self.neighbors:
            raise ValueError(f"neighbors={self.neighbors} exceeds the {len(patches)} database patches")
        self._database = patches.float()

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self._database is None:
            raise ValueError("quilting has no patch database: call prepare(context) with a context.train_set")
        if self._database.shape[1] != images.shape[1]:
            raise ValueError(f"images have {images.shape[1]} channels, the patch database "
                             f"{self._database.shape[1]}")
        if generator is None:
            generator = torch.Generator(device=images.device)
            generator.seed()
        database = self._database.to(images.device)
        return quilt(images.float(), database, self.neighbors, self.overlap, generator).to(images.dtype)
