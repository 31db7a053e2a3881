"""SPADE (Cohen & Hoshen 2020): image-level kNN picks the K nearest good images, then pixel-level
kNN against their feature pyramids; per-layer distance maps are fused with weights.

Shares the backbone and feature code with PatchCore. The gallery keeps every fitted image's
feature maps (bounded by ``max_gallery_images``, a random subset when more are given).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from services.vision.backbone import FeatureExtractor
from services.vision.knn import nearest
from services.vision.maps import gaussian_blur


@dataclass(frozen=True)
class SpadeParams:
    k_images: int = 50  # nearest good images whose pixels are searched
    layer_weights: tuple[float, ...] | None = None  # per-layer map weights; None = equal
    max_gallery_images: int = 400
    sigma: float = 4.0
    seed: int = 0


def pooled_descriptor(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """Global average pool of every layer, concatenated: (B, sum C)."""
    return torch.cat([fmap.float().mean(dim=(2, 3)) for fmap in feature_maps], dim=1)


class SpadeModel(nn.Module):
    descriptors: torch.Tensor

    def __init__(
        self,
        extractor: FeatureExtractor,
        descriptors: torch.Tensor,
        gallery: list[torch.Tensor],
        image_size: int,
        params: SpadeParams,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.image_size = image_size
        self.params = params
        self.register_buffer("descriptors", descriptors.float().contiguous())
        self.n_layers = len(gallery)
        for i, maps in enumerate(gallery):  # (N, h, w, C) per layer, channels last for the search
            self.register_buffer(f"gallery_{i}", maps.contiguous())
        weights = params.layer_weights or tuple(1.0 / len(gallery) for _ in gallery)
        if len(weights) != len(gallery):
            raise ValueError(f"{len(weights)} layer weights given for {len(gallery)} layers")
        self.layer_weights = weights

    def gallery_layer(self, i: int) -> torch.Tensor:
        layer: torch.Tensor = getattr(self, f"gallery_{i}")
        return layer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image scores (B,): mean distance to the K nearest good images; maps (B, S, S);
        embeddings (B, D): the pooled descriptors."""
        feature_maps = [fmap.float() for fmap in self.extractor(images)]
        descriptors = pooled_descriptor(feature_maps)
        image_distances, neighbours = nearest(descriptors, self.descriptors, self.params.k_images)
        batch = images.shape[0]
        maps = torch.zeros(batch, 1, self.image_size, self.image_size)
        for i, (fmap, weight) in enumerate(zip(feature_maps, self.layer_weights, strict=True)):
            h, w, channels = fmap.shape[2], fmap.shape[3], fmap.shape[1]
            gallery = self.gallery_layer(i)
            for b in range(batch):
                candidates = gallery[neighbours[b]].reshape(-1, channels).float()
                queries = fmap[b].permute(1, 2, 0).reshape(-1, channels)
                distances, _ = nearest(queries, candidates, 1)
                layer_map = distances.view(1, 1, h, w)
                maps[b] += (
                    weight
                    * F.interpolate(
                        layer_map,
                        size=(self.image_size, self.image_size),
                        mode="bilinear",
                        align_corners=False,
                    )[0]
                )
        maps = gaussian_blur(maps, self.params.sigma).squeeze(1)
        return image_distances.mean(dim=1), maps, descriptors


def fit_spade(
    extractor: FeatureExtractor,
    batches: Iterable[torch.Tensor],
    n_images: int,
    image_size: int,
    params: SpadeParams,
) -> SpadeModel:
    """Store pooled descriptors and (float16) feature maps of the good images."""
    generator = torch.Generator().manual_seed(params.seed)
    keep_share = min(1.0, params.max_gallery_images / max(n_images, 1))
    descriptors: list[torch.Tensor] = []
    layers: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        for images in batches:
            feature_maps = extractor(images)
            keep = torch.rand(images.shape[0], generator=generator) < keep_share
            if not keep.any():
                continue
            descriptors.append(pooled_descriptor(feature_maps)[keep])
            if not layers:
                layers = [[] for _ in feature_maps]
            for store, fmap in zip(layers, feature_maps, strict=True):
                store.append(fmap[keep].permute(0, 2, 3, 1).to(torch.float16).clone())
    if not descriptors:
        raise ValueError("no training images could be used to build the SPADE gallery")
    return SpadeModel(
        extractor, torch.cat(descriptors), [torch.cat(store) for store in layers], image_size, params
    )
