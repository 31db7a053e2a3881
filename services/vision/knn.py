"""Exact nearest-neighbour search in chunks, as matrix products (|q|^2 - 2 q.b + |b|^2), in float32
or screened in bfloat16 (:func:`nearest_screened`, exact too)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Largest (queries x bank) distance block held at once: 1M floats = 4 MB (8,192 queries against
# 4,990 entries here, interleaved medians: 98.9 ms at 4 MB, 103.3 ms at 8 MB, 111.4 ms at 2 MB).
MAX_BLOCK_ELEMENTS = 1024 * 1024


def squared_norms(bank: torch.Tensor) -> torch.Tensor:
    return (bank * bank).sum(dim=1)


def nearest(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int = 1,
    bank_squared: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (Q, k) and indices (Q, k) of each query's ``k`` nearest rows of ``bank``.

    Exact. The ranking is made on ``|b|^2 - 2 q.b`` (one matrix product per block); ``|q|^2``, the
    same for every entry of a query, is added to the k values kept, not to the whole block (a pass
    over the block less: with the 4 MB blocks, 98.9 against 107.5 ms for 8,192 x 4,990 here)."""
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    k = min(k, bank.shape[0])
    if bank_squared is None:
        bank_squared = squared_norms(bank)
    chunk = max(1, MAX_BLOCK_ELEMENTS // bank.shape[0])
    distances, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk]
        shifted = torch.addmm(bank_squared.unsqueeze(0), block, bank.T, alpha=-2.0)  # d^2 - |q|^2
        if k == 1:
            values, where = shifted.min(dim=1, keepdim=True)
        else:
            values, where = shifted.topk(k, dim=1, largest=False)
        values += squared_norms(block).unsqueeze(1)
        distances.append(values.clamp_min_(0).sqrt_())
        indices.append(where)
    return torch.cat(distances), torch.cat(indices)


# bfloat16 keeps 8 significant bits: each rounding is off by at most 2^-8 of the value
BFLOAT16_UNIT_ROUNDOFF = 2.0**-8


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (about 2.5x float32 speed here);
    elsewhere bfloat16 products are emulated and slower than float32 ones."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class BfloatScreen:
    """A memory bank prepared for :func:`nearest_screened`: centred on its mean (smaller products,
    so smaller rounding errors), in bfloat16, with its squared norms and largest norm."""

    centre: torch.Tensor  # (D,) float32
    centred: torch.Tensor  # (N, D) bfloat16
    centred_squared: torch.Tensor  # (N,) float32
    max_norm: float

    @classmethod
    def of(cls, bank: torch.Tensor) -> BfloatScreen:
        centre = bank.mean(dim=0)
        centred = bank - centre
        squared = squared_norms(centred)
        max_norm = float(squared.max().sqrt()) if len(squared) else 0.0
        return cls(centre, centred.bfloat16(), squared, max_norm)


def nearest_screened(
    queries: torch.Tensor, bank: torch.Tensor, screen: BfloatScreen
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest neighbour (like :func:`nearest` with ``k=1``), screened in bfloat16.

    Per block of queries, one bfloat16 matrix product ranks the whole bank approximately; every
    entry whose approximate distance could, within a proven error bound, be the nearest is then
    measured exactly in float32 (4.3 entries per query on magnetic-tile patches), and the nearest of
    those is returned. The bound: with ``u = 2^-8``, rounding both factors and the product to
    bfloat16 (float32 accumulation over D terms) moves ``q.b`` by at most ``c |q| |b|``,
    ``c = (1 + u)^3 (1 + D 2^-24) - 1``, on centred vectors; the float32 steps around it are covered
    by a further ``1e-5 (|q| + max|b|)^2``. 46 against 79 ms for 4,096 queries against 4,990 entries
    of 128 floats on one core here (1M-element blocks; 58 ms at 256k, 51 ms at 2M)."""
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    entries, dim = bank.shape
    error = (1 + BFLOAT16_UNIT_ROUNDOFF) ** 3 * (1 + dim * 2.0**-24) - 1
    chunk = max(1, MAX_BLOCK_ELEMENTS // entries)
    distances = torch.empty(queries.shape[0])
    indices = torch.empty(queries.shape[0], dtype=torch.long)
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk]
        centred = block - screen.centre
        norms = torch.linalg.vector_norm(centred, dim=1)
        # |b|^2 - 2 q.b, approximately: the distance less |q|^2, which is the same for a whole row
        approximate = torch.add(screen.centred_squared, centred.bfloat16() @ screen.centred.T, alpha=-2)
        slack = 2 * error * norms * screen.max_norm + 1e-5 * (norms + screen.max_norm) ** 2 + 1e-30
        ceiling = approximate.amin(dim=1) + 2 * slack
        rows, cols = _at_most(approximate, ceiling)
        squared = (block[rows] - bank[cols]).pow_(2).sum(dim=1)
        best = torch.full((len(block),), math.inf).scatter_reduce_(0, rows, squared, "amin")
        hit = squared == best[rows]
        where = torch.full((len(block),), entries, dtype=torch.long)
        where.scatter_reduce_(0, rows[hit], cols[hit], "amin")
        # only a query with non-finite features has no candidate: NaN, as the float32 search gives
        unmatched = where == entries
        where[unmatched], best[unmatched] = 0, math.nan
        indices[start : start + chunk] = where
        distances[start : start + chunk] = best.sqrt_()
    return distances.unsqueeze(1), indices.unsqueeze(1)


def _at_most(values: torch.Tensor, ceilings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the entries of ``values`` (Q, N, on the CPU) at most their row's ceiling
    (Q,). numpy's comparison and flatnonzero: 0.12 ms per 1M entries here, torch's 1.4 ms."""
    flat = torch.from_numpy(np.flatnonzero(values.numpy() <= ceilings.numpy()[:, None]))
    return flat // values.shape[1], flat % values.shape[1]
