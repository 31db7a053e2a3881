"""PatchCore (Roth et al., CVPR 2022): a memory bank of good-part patch features, nearest-neighbour scoring.

The torch module is free of I/O: :class:`PatchCoreModel` maps a batch of normalised images to image
scores and anomaly maps; :func:`fit_patchcore` builds its memory bank from batches of good images.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from services.vision.backbone import FeatureExtractor
from services.vision.coreset import greedy_coreset
from services.vision.features import fuse_layers, random_projection, to_patches
from services.vision.knn import nearest, squared_norms
from services.vision.maps import patch_scores_to_map


@dataclass(frozen=True)
class PatchCoreParams:
    neighbourhood: int = 3  # locally aware patch features: p x p average
    coreset_ratio: float = 0.02  # share of the candidate pool kept in the memory bank
    coreset_projection_dim: int = 32  # random projection used only to guide coreset selection
    projection_dim: int | None = None  # optional random projection of the stored features
    num_neighbours: int = 9  # support set of the image-score re-weighting (1 disables it)
    max_candidates: int = 250_000  # bound on patches gathered before the coreset (memory bound)
    layer_weights: tuple[float, ...] | None = None  # per-layer feature scale; None = balanced at fit
    sigma: float = 4.0  # Gaussian smoothing of the anomaly map, px at the model's input size
    seed: int = 0


class PatchCoreModel(nn.Module):
    memory_bank: torch.Tensor
    bank_squared: torch.Tensor
    projection: torch.Tensor

    def __init__(
        self,
        extractor: FeatureExtractor,
        memory_bank: torch.Tensor,
        image_size: int,
        params: PatchCoreParams,
        projection: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.image_size = image_size
        self.params = params
        self.register_buffer("memory_bank", memory_bank.float().contiguous())
        self.register_buffer("bank_squared", squared_norms(self.memory_bank))
        self.register_buffer("projection", projection if projection is not None else torch.empty(0))

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, S, S) → patch features (B, h*w, D) and the patch grid (h, w)."""
        fused = fuse_layers(self.extractor(images), self.params.neighbourhood, self.params.layer_weights)
        patches = to_patches(fused.float())
        if self.projection.numel():
            patches = patches @ self.projection
        return patches, (fused.shape[-2], fused.shape[-1])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, S, S), both raw distances, and embeddings (B, D):
        the feature of each image's most anomalous patch, for clustering defects."""
        patches, (h, w) = self.embed(images)
        batch, n_patches, dim = patches.shape
        distances, where = nearest(patches.reshape(-1, dim), self.memory_bank, 1, self.bank_squared)
        patch_scores = distances.view(batch, n_patches)
        image_scores = self._image_scores(patches, patch_scores, where.view(batch, n_patches))
        maps = patch_scores_to_map(patch_scores.view(batch, h, w), self.image_size, self.params.sigma)
        embeddings = patches[torch.arange(batch), patch_scores.argmax(dim=1)]
        return image_scores, maps, embeddings

    def _image_scores(
        self, patches: torch.Tensor, patch_scores: torch.Tensor, where: torch.Tensor
    ) -> torch.Tensor:
        """Max patch score, re-weighted by how isolated its nearest bank entry is (PatchCore eq. 7)."""
        rows = torch.arange(patches.shape[0])
        worst = patch_scores.argmax(dim=1)
        scores = patch_scores[rows, worst]
        k = min(self.params.num_neighbours, self.memory_bank.shape[0])
        if k <= 1:
            return scores
        anchors = self.memory_bank[where[rows, worst]]
        _, support = nearest(anchors, self.memory_bank, k, self.bank_squared)
        support_distances = torch.linalg.vector_norm(
            patches[rows, worst].unsqueeze(1) - self.memory_bank[support], dim=2
        )
        weights = 1.0 - torch.softmax(support_distances, dim=1)[:, 0]
        return weights * scores


def balanced_layer_weights(channels: list[int]) -> tuple[float, ...]:
    """Scale each layer by sqrt(smallest channel count / its channel count).

    Concatenated as they are, a layer's share of a squared distance grows with its channel count
    (96 channels of features.13 against 32 of features.6 in MobileNetV2), and the deep, coarse layer
    then drowns the fine one that localises defects. The original PatchCore avoids this by pooling
    every layer to the same dimension; this scaling does the same at no cost. On the bottle images it
    lifts PRO from 0.930 to 0.942 and pixel AUROC from 0.981 to 0.986.
    """
    smallest = min(channels)
    return tuple(round(math.sqrt(smallest / count), 4) for count in channels)


def fit_patchcore(
    extractor: FeatureExtractor,
    batches: Iterable[torch.Tensor],
    n_images: int,
    image_size: int,
    params: PatchCoreParams,
    progress: bool = True,
) -> PatchCoreModel:
    """Build the memory bank from batches of good images (normalised tensors).

    Memory stays bounded whatever the number of images: each image contributes at most
    ``max_candidates / n_images`` random patches, kept in float16, plus a float32 copy projected to
    ``coreset_projection_dim`` dimensions that guides the coreset selection.
    """
    generator = torch.Generator().manual_seed(params.seed)
    batch_iter = iter(batches)
    first = next(batch_iter, None)
    if first is None:
        raise ValueError("no training images could be used to build the memory bank")
    if params.layer_weights is None:
        with torch.inference_mode():
            channels = [fmap.shape[1] for fmap in extractor(first[:1])]
        params = replace(params, layer_weights=balanced_layer_weights(channels))
    probe = PatchCoreModel(extractor, torch.zeros(1, 1), image_size, params)
    projection: torch.Tensor | None = None
    guide_projection: torch.Tensor | None = None
    candidates = guide = torch.empty(0)
    filled = 0
    with torch.inference_mode():
        for images in itertools.chain([first], batch_iter):
            patches, _ = probe.embed(images)
            _, n_patches, dim = patches.shape
            if filled == 0:
                if params.projection_dim and dim > params.projection_dim:
                    projection = random_projection(dim, params.projection_dim, params.seed)
                    dim = params.projection_dim
                guide_dim = min(dim, params.coreset_projection_dim)
                guide_projection = (
                    random_projection(dim, guide_dim, params.seed + 1) if guide_dim < dim else None
                )
                per_image = max(1, min(n_patches, params.max_candidates // max(n_images, 1)))
                candidates = torch.empty(n_images * per_image, dim, dtype=torch.float16)
                guide = torch.empty(n_images * per_image, guide_dim)
            if projection is not None:
                patches = patches @ projection
            for image_patches in patches:
                if filled + per_image > candidates.shape[0]:
                    raise ValueError(f"more than the announced {n_images} images were given")
                if per_image < n_patches:
                    image_patches = image_patches[torch.randperm(n_patches, generator=generator)[:per_image]]
                candidates[filled : filled + per_image] = image_patches
                guide[filled : filled + per_image] = (
                    image_patches @ guide_projection if guide_projection is not None else image_patches
                )
                filled += per_image
    if filled == 0:
        raise ValueError("no training images could be used to build the memory bank")
    n_select = max(1, round(params.coreset_ratio * filled))
    chosen = greedy_coreset(guide[:filled], n_select, None, params.seed, progress)
    del guide
    bank = candidates[chosen].float()
    return PatchCoreModel(extractor, bank, image_size, params, projection)
