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


def greedy_coresets(
    points: torch.Tensor,
    keeps: list[torch.Tensor],
    n_selects: list[int],
    seed: int = 0,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Several greedy coresets of one pool in a single sweep: coreset ``k`` is chosen among the rows
    that the boolean mask ``keeps[k]`` marks, ``n_selects[k]`` of them, and returned as indices into
    ``points`` (N, D, already projected).

    Cross-fitting needs one coreset per fold (each without the fold's rows) and one of everything;
    chosen one after another, each pick of each coreset reads the whole pool again, and reading the
    pool is what a pick costs. Here every pick reads the pool once for all coresets (one matrix
    product with one row per coreset). Each coreset follows the same rule as :func:`greedy_coreset`
    on its own rows (the same seeded start, the farthest remaining row next); the distances are
    computed by another kernel, so a near tie may break the other way."""
    if len(keeps) != len(n_selects) or not keeps:
        raise ValueError("one row mask per coreset size is needed")
    n_points, n_sets = points.shape[0], len(keeps)
    points = points.float().contiguous()
    squared = torch.cat([(rows * rows).sum(dim=1) for rows in points.split(SQUARE_ROWS)])
    # |x - c|^2 = [x, |x|^2, 1] . [-2c, 1, |c|^2]: one product gives every distance, rows along the
    # pool so that the running minimum and the argmax read contiguous memory
    augmented = torch.cat([points.T, squared[None, :], torch.ones(1, n_points)])
    del points
    min_distance = torch.full((n_sets, n_points), float("inf"))
    current = torch.empty(n_sets, dtype=torch.long)
    sizes, everything = [], []  # coresets at least as large as their rows keep every row
    for k, (keep, n_select) in enumerate(zip(keeps, n_selects, strict=True)):
        n_rows = int(keep.sum())
        if n_select <= 0 or not n_rows:
            raise ValueError("every coreset needs a positive size and at least one row")
        min_distance[k, ~keep] = -float("inf")  # rows outside the set are never picked
        generator = torch.Generator().manual_seed(seed)
        current[k] = keep.nonzero()[int(torch.randint(n_rows, (1,), generator=generator)), 0]
        sizes.append(min(n_select, n_rows))
        everything.append(n_select >= n_rows)
    picks = torch.empty(max(sizes), n_sets, dtype=torch.long)
    picks[0] = current
    distance = torch.empty(n_sets, n_points)
    longest = max((size for size, full in zip(sizes, everything, strict=True) if not full), default=1)
    for i in tqdm(
        range(1, longest), desc="coresets", unit="pick", disable=not progress or longest == 1, mininterval=1
    ):
        centres = augmented[:, current]
        weights = torch.cat([centres[:-2] * -2.0, torch.ones(1, n_sets), centres[-2:-1]]).T
        torch.mm(weights, augmented, out=distance)
        torch.minimum(min_distance, distance, out=min_distance)
        current = torch.argmax(min_distance, dim=1)
        picks[i] = current
    return [
        keep.nonzero()[:, 0] if full else picks[:size, k]
        for k, (keep, size, full) in enumerate(zip(keeps, sizes, everything, strict=True))
    ]
