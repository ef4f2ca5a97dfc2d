"""Sparse Transformation Layer (STL) and its stratified version, `004_bd3ac3fe115e93bb.txt` section 3.

Section 3.2-3.3: a convolutional dictionary (K = 64 filters of size S = 8 per channel, lambda = 0.2,
section 5.1) is learned on clean training images; each input is projected onto the
"quasi-natural" space by convolutional basis pursuit denoising with the dictionary fixed, and the
reconstruction sum_k d_k (*) z_k is the defended image (`sparse_coding.py` holds the ADMM).
Section 3.4: with `clusters` > 1, a denoising autoencoder's latent space is clustered by k-means,
one dictionary is learned per cluster, and an input uses the dictionary of the cluster voted by its
`neighbors` nearest training latents (`stratify.py`). The paper uses 4 clusters for CIFAR-10.

Choices where the paper is silent (config values):
- The image is reflect-padded by S pixels (the Fourier-domain convolutions are circular) and split
  by a Tikhonov filter of strength `lowpass` into a smooth part, kept as is, and a detail part,
  which is sparse coded (the standard preprocessing of convolutional sparse coding, e.g. SPORCO's
  examples); `lowpass: null` codes the whole image. lambda applies to pixel values in [0, 1].
- At test time the filters stay fixed (only the codes are solved for); the caption of Figure 2
  mentions optimising the filters jointly, sections 3.3 and 3.5 describe the projection with the
  learned filters.
- ADMM penalty rho: `rho: null` uses 50 lambda + 1 (SPORCO's default for ConvBPDN).
- Fitting cost: the paper learns from the whole training set (CIFAR-10: 50,000 images; the count
  and the iteration numbers are not given). Here the dictionary is learned on `learn_patches`
  random crops of `learn_patch_size` pixels of the detail part of the first `train_images` clean
  images (the DAE and k-means use all `train_images`), with `learning_iterations` alternations of
  coding (`learning_coding_iterations` ADMM steps) and filter update (`filter_steps` FISTA steps).
  Fitted parts are cached per data and config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from defense_cli.defenses.base import Defense, DefenseContext
from defense_cli.defenses.fitted import fit_once, random_patches, training_images
from defense_cli.parameter_checks import check_int
from defense_cli.defenses.sparse_coding import (
    learn_dictionary, normalise_filters, spectral_dictionary, sparse_reconstruction, tikhonov_split)
from defense_cli.defenses.stratify import DenoisingAutoencoder, kmeans, knn_vote, train_dae

KMEANS_ITERATIONS = 50
FITTING_PARAMETERS = ("filters", "filter_size", "lmbda", "rho", "lowpass", "clusters", "latent_dim", "dae_noise",
                      "dae_epochs", "learn_patches", "learn_patch_size", "learning_iterations",
                      "learning_coding_iterations", "filter_steps")


class STL(Defense):
    """Sparse Transformation Layer (004 section 3.2-3.4): projection by convolutional sparse coding."""

    needs_train_set = True

    def __init__(self, filters: int = 64, filter_size: int = 8, lmbda: float = 0.2, rho: float | None = None,
                 iterations: int = 50, lowpass: float | None = 5.0, clusters: int = 1, neighbors: int = 10,
                 latent_dim: int = 64, dae_noise: float = 0.1, dae_epochs: int = 10, train_images: int = 1000,
                 learn_patches: int = 256, learn_patch_size: int = 24, learning_iterations: int = 6,
                 learning_coding_iterations: int = 15, filter_steps: int = 10) -> None:
        for name, value in (("filters", filters), ("filter_size", filter_size), ("iterations", iterations),
                            ("clusters", clusters), ("neighbors", neighbors), ("latent_dim", latent_dim),
                            ("train_images", train_images), ("learn_patches", learn_patches),
                            ("learning_iterations", learning_iterations),
                            ("learning_coding_iterations", learning_coding_iterations),
                            ("filter_steps", filter_steps)):
            check_int(name, value, 1)
        check_int("dae_epochs", dae_epochs, 0)
        if not lmbda > 0:
            raise ValueError(f"lmbda={lmbda!r} (the l1 weight lambda) must be > 0")
        if rho is not None and not rho > 0:
            raise ValueError(f"rho={rho!r} (the ADMM penalty) must be > 0 or null")
        if lowpass is not None and not lowpass > 0:
            raise ValueError(f"lowpass={lowpass!r} (Tikhonov strength) must be > 0 or null")
        if not dae_noise >= 0:
            raise ValueError(f"dae_noise={dae_noise!r} must be >= 0")
        if not isinstance(learn_patch_size, int) or learn_patch_size <= filter_size:
            raise ValueError(f"learn_patch_size={learn_patch_size!r} must be an integer > filter_size={filter_size}")
        if train_images < clusters:
            raise ValueError(f"train_images={train_images} must be at least clusters={clusters}")
        self.filters = filters
        self.filter_size = filter_size
        self.lmbda = lmbda
        self.rho = rho
        self.iterations = iterations
        self.lowpass = lowpass
        self.clusters = clusters
        self.neighbors = neighbors
        self.latent_dim = latent_dim
        self.dae_noise = dae_noise
        self.dae_epochs = dae_epochs
        self.train_images = train_images
        self.learn_patches = learn_patches
        self.learn_patch_size = learn_patch_size
        self.learning_iterations = learning_iterations
        self.learning_coding_iterations = learning_coding_iterations
        self.filter_steps = filter_steps
        self._dictionaries: torch.Tensor | None = None   # (clusters, K, C, S, S)
        self._dae: DenoisingAutoencoder | None = None
        self._latents: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    @property
    def admm_rho(self) -> float:
        return self.rho if self.rho is not None else 50 * self.lmbda + 1

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(smooth, detail) of the reflect-padded images; only the detail is sparse coded."""
        pad = self.filter_size
        if min(images.shape[-2:]) <= pad:
            raise ValueError(f"filter_size={pad} needs images larger than {pad} pixels, got {tuple(images.shape[-2:])}")
        padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        if self.lowpass is None:
            return torch.zeros_like(padded), padded
        return tikhonov_split(padded, self.lowpass)

    # ----- fitting -------------------------------------------------------------------------------
    def prepare(self, context: DefenseContext) -> None:
        images = training_images(context, self.train_images, "stl")
        fitting = {k: getattr(self, k) for k in FITTING_PARAMETERS}
        payload = fit_once(context, "stl", images, fitting, lambda: self._fit(images, context))
        self.set_dictionaries(payload["dictionaries"].to(context.device))
        if self.clusters > 1:
            dae = DenoisingAutoencoder(images.shape[1], self.latent_dim)
            dae.load_state_dict(payload["dae"])
            self._dae = dae.to(context.device).eval()
            self._latents = payload["latents"].to(context.device)
            self._labels = payload["labels"].to(context.device)

    def _fit(self, images: torch.Tensor, context: DefenseContext) -> dict:
        generator = torch.Generator().manual_seed(context.seed)
        fitted: dict = {}
        labels = torch.zeros(len(images), dtype=torch.long)
        if self.clusters > 1:
            dae = train_dae(images, self.latent_dim, self.dae_noise, self.dae_epochs, context.seed)
            with torch.no_grad():
                latents = dae.encode(images)
            labels = kmeans(latents, self.clusters, KMEANS_ITERATIONS, generator)
            fitted.update(dae=dae.state_dict(), latents=latents, labels=labels)
        dictionaries = [self._learn(images[labels == cluster], generator, context.device)
                        for cluster in range(self.clusters)]
        return {**fitted, "dictionaries": torch.stack(dictionaries).cpu()}

    def _learn(self, images: torch.Tensor, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Filters (K, C, S, S) learned on random crops of the detail part of `images` (initialised by
        random S x S detail patches)."""
        if len(images) == 0:  # an empty k-means cluster: never voted for, keep a valid dictionary
            shape = (self.filters, images.shape[1], self.filter_size, self.filter_size)
            return normalise_filters(torch.randn(shape, generator=generator))
        _, detail = self.split(images)
        if min(detail.shape[-2:]) < self.learn_patch_size:
            raise ValueError(f"learn_patch_size={self.learn_patch_size} exceeds the padded training images "
                             f"{tuple(detail.shape[-2:])}")
        crops = random_patches(detail, self.learn_patch_size, self.learn_patches, generator)
        initial = random_patches(detail, self.filter_size, self.filters, generator)
        return learn_dictionary(crops.to(device), initial.to(device), self.lmbda, self.admm_rho,
                                self.learning_iterations, self.learning_coding_iterations, self.filter_steps)

    def set_dictionaries(self, dictionaries: torch.Tensor) -> None:
        """Use fitted filters (clusters, K, C, S, S) (what `prepare` learns)."""
        expected = (self.clusters, self.filters)
        if dictionaries.ndim != 5 or tuple(dictionaries.shape[:2]) != expected or \
                tuple(dictionaries.shape[-2:]) != (self.filter_size, self.filter_size):
            raise ValueError(f"dictionaries must be (clusters={self.clusters}, filters={self.filters}, C, "
                             f"{self.filter_size}, {self.filter_size}), got {tuple(dictionaries.shape)}")
        self._dictionaries = dictionaries.float()

    # ----- projection ----------------------------------------------------------------------------
    def assign_clusters(self, images: torch.Tensor) -> torch.Tensor:
        """Cluster of each image: vote of its k nearest training images in the DAE latent space."""
        if self.clusters == 1:
            return torch.zeros(len(images), dtype=torch.long, device=images.device)
        dae = self._dae.to(images.device)
        latents = dae.encode(images)
        return knn_vote(latents, self._latents.to(images.device), self._labels.to(images.device),
                        self.neighbors, self.clusters)

    def project(self, detail: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """The sparse reconstruction D z of the detail part with one dictionary (CBPDN by ADMM)."""
        dictionary = spectral_dictionary(filters.to(detail.device), tuple(detail.shape[-2:]), self.admm_rho)
        return sparse_reconstruction(dictionary, detail, self.lmbda, self.iterations)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self._dictionaries is None:
            raise ValueError("stl has no fitted dictionary: call prepare(context) with a context.train_set")
        if self._dictionaries.shape[2] != images.shape[1]:
            raise ValueError(f"images have {images.shape[1]} channels, the STL dictionary "
                             f"{self._dictionaries.shape[2]}")
        work = images.float()
        smooth, detail = self.split(work)
        clusters = self.assign_clusters(work)
        reconstruction = torch.empty_like(detail)
        for cluster in clusters.unique().tolist():
            members = (clusters == cluster).nonzero().squeeze(1)
            reconstruction[members] = self.project(detail[members], self._dictionaries[cluster])
        pad = self.filter_size
        out = (smooth + reconstruction)[..., pad:pad + images.shape[-2], pad:pad + images.shape[-1]]
        return out.clamp(0, 1).to(images.dtype)
