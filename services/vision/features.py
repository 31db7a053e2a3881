"""Patch features shared by PatchCore and SPADE: locally aware aggregation and multi-layer fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def aggregate_locally(feature_map: torch.Tensor, neighbourhood: int = 3) -> torch.Tensor:
    """Average each position with its ``neighbourhood`` x ``neighbourhood`` neighbours (PatchCore §3.1)."""
    if neighbourhood <= 1:
        return feature_map
    return F.avg_pool2d(feature_map, neighbourhood, stride=1, padding=neighbourhood // 2)


def fuse_layers(
    feature_maps: list[torch.Tensor],
    neighbourhood: int = 3,
    layer_weights: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """Aggregate each layer locally, upsample to the finest layer's grid, concatenate channels.

    ``layer_weights`` scale each layer's features, i.e. its share of every distance (default: 1 each).
    Returns a (B, D, h, w) tensor where (h, w) is the first (finest) map's size.
    """
    size = feature_maps[0].shape[-2:]
    weights = layer_weights or (1.0,) * len(feature_maps)
    if len(weights) != len(feature_maps):
        raise ValueError(f"{len(weights)} layer weights given for {len(feature_maps)} layers")
    fused = []
    for fmap, weight in zip(feature_maps, weights, strict=True):
        fmap = aggregate_locally(fmap, neighbourhood)
        if weight != 1.0:
            fmap = fmap * weight
        if fmap.shape[-2:] != size:
            fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
        fused.append(fmap)
    return torch.cat(fused, dim=1)


def to_patches(fused: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) → (B, h*w, D), contiguous (free when ``fused`` is channels-last)."""
    batch, dim, h, w = fused.shape
    return fused.permute(0, 2, 3, 1).reshape(batch, h * w, dim).contiguous()


def random_projection(in_dim: int, out_dim: int, seed: int = 0) -> torch.Tensor:
    """A Johnson–Lindenstrauss Gaussian projection matrix (in_dim, out_dim), scaled to keep distances."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, out_dim, generator=generator) / out_dim**0.5
