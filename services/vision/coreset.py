"""Greedy k-center coreset selection (PatchCore §3.2), vectorised.

Each pick is one matrix-vector product over the candidate pool in a randomly projected space of
``projection_dim`` dimensions, then an in-place running minimum; the farthest remaining point is
picked next. The projection only guides the selection: the selected rows keep full dimensionality.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from services.vision.features import random_projection

SQUARE_ROWS = 16_384


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    projection_dim: int | None = 32,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Indices of ``n_select`` rows of ``features`` (N, D) chosen by greedy farthest-point selection."""
    n_points = features.shape[0]
    if n_select <= 0:
        raise ValueError("coreset size must be positive")
    if n_select >= n_points:
        return torch.arange(n_points)
    points = features
    if projection_dim and points.shape[1] > projection_dim:
        points = points.float() @ random_projection(points.shape[1], projection_dim, seed)
    points = points.float().contiguous()
    # row norms in slices: a full ``points * points`` would be one more copy of the pool (32 MB)
    squared = torch.cat([(rows * rows).sum(dim=1) for rows in points.split(SQUARE_ROWS)])
    generator = torch.Generator().manual_seed(seed)
    current = int(torch.randint(n_points, (1,), generator=generator))
    selected = torch.empty(n_select, dtype=torch.long)
    selected[0] = current
    min_distance = torch.full((n_points,), float("inf"))
    distance = torch.empty(n_points)
    for i in tqdm(range(1, n_select + 1), desc="coreset", unit="pick", disable=not progress, mininterval=1):
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, as one fused matrix-vector product
        torch.addmv(squared + squared[current], points, points[current], alpha=-2.0, out=distance)
        torch.minimum(min_distance, distance, out=min_distance)
        if i == n_select:
            break
        current = int(torch.argmax(min_distance))
        selected[i] = current
    return selected
