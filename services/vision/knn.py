"""Exact nearest-neighbour search in chunks, as matrix products (|q|^2 - 2 q.b + |b|^2), in float32
or screened in bfloat16 (:func:`nearest_screened`, exact too)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

# Largest (queries x bank) distance block held at once: 1M floats = 4 MB (faster than 2 or 8 MB;
# docs/engine.md, "Measurements behind the code").
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
    over the block less)."""
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


# bfloat16 keeps 8 significant bits, float32 24: each rounding is off by at most 2^-8 (2^-24) of it
BFLOAT16_UNIT_ROUNDOFF = 2.0**-8
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (about 2.5x float32 speed here);
    elsewhere bfloat16 products are emulated and slower than float32 ones."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


# share of the bank's spread (squared distance to its mean) that the screen's subspace keeps
SCREEN_KEPT_SPREAD = 0.97
# largest bfloat16 block of the screen: 2M elements, 4 MB (8,192 patches against 4,990 entries
# here, two threads, three interleaved runs: 60-62 ms at 2M, 59 at 4M, 72-74 at 1M, 84 at 512k)
SCREEN_BLOCK_ELEMENTS = 2 * 1024 * 1024
# a block whose queries have more candidates than this on average (patches far outside the bank's
# subspace; noise images give 26 here, real ones 3-7) is searched in float32 instead, which keeps
# the exact measurement's memory bounded
SCREEN_MAX_CANDIDATES = 64


@dataclass(frozen=True)
class BfloatScreen:
    """A memory bank prepared for :func:`nearest_screened`: centred on its mean, projected on its
    leading principal directions (``basis``, the fewest, in steps of 8, that keep
    ``SCREEN_KEPT_SPREAD`` of the bank's spread), and extended so that one bfloat16 product gives a
    lower bound of every squared distance (each entry as its projection ``Pb``, the norm of the
    rest ``r_b``, ``|b|²`` as two bfloat16 parts, and two ones)."""

    centre: torch.Tensor  # (D,) float32
    basis: torch.Tensor  # (D, k) float32, orthonormal columns
    extended: torch.Tensor  # (N, k + 5) bfloat16: Pb, r_b, high(|b|²), low(|b|²), 1, 1
    max_norm: float

    @classmethod
    def of(cls, bank: torch.Tensor) -> BfloatScreen:
        centre = bank.mean(dim=0)
        centred = bank - centre
        _, singular, directions = torch.linalg.svd(centred.double(), full_matrices=False)
        spread = singular.square().cumsum(0)
        needed = int((spread < SCREEN_KEPT_SPREAD * spread[-1]).sum()) + 1 if len(spread) else 1
        basis = directions[: min(len(directions), -(-needed // 8) * 8)].T.float().contiguous()
        squared = squared_norms(centred)
        max_norm = float(squared.max().sqrt()) if len(squared) else 0.0
        projected, rest = _project(centred, basis)
        high, low = _bfloat16_parts(squared)
        ones = torch.ones(len(bank), 2)
        extended = torch.cat([projected, rest.unsqueeze(1), high.unsqueeze(1), low.unsqueeze(1), ones], 1)
        return cls(centre, basis, extended.bfloat16().contiguous(), max_norm)


def nearest_screened(
    queries: torch.Tensor, bank: torch.Tensor, screen: BfloatScreen
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest neighbour (like :func:`nearest` with ``k=1``), screened in bfloat16 in the
    bank's principal subspace.

    For a query ``q`` and an entry ``b`` (both centred), split each into its projection on the
    screen's basis and the rest: ``|q - b|² = |Pq - Pb|² + |R(q - b)|²`` and
    ``|R(q - b)| >= |r_q - r_b|``, so ``L = |Pq - Pb|² + (r_q - r_b)²`` is a lower bound of the
    squared distance. Extending the query to ``(-2Pq, -2r_q, 1, 1, high(|q|²), low(|q|²))``, one
    bfloat16 matrix product per block of queries gives ``L`` for every entry (k + 5 columns instead
    of D: 69 instead of 128 on magnetic-tile patches). The entry with the smallest approximate ``L``
    is measured exactly: its squared distance ``U`` bounds the nearest one's. Every entry whose
    ``L`` could be at most ``U`` is then measured exactly in float32 (a handful per query), and
    the nearest of those is returned. A block of queries with more than
    ``SCREEN_MAX_CANDIDATES`` candidates each on average is searched in float32 instead.

    The rounding bound, with ``u = 2^-8`` (bfloat16 keeps 8 significant bits) and ``g(n) = n 2^-24``
    (float32 accumulation of n terms): the product's float32 sum is within
    ``K = 2((1+u)² - 1)|q||b| + (u² + 2 g(D))(|q|² + |b|²) + g(k+5)(1+u)²(|q| + |b|)²`` of ``L``:
    each factor of the cross terms is rounded once (and ``|Pq||Pb| + r_q r_b <= |q||b|``), each norm
    is split into two bfloat16 parts that together are off by at most ``u²`` of it, and products of
    bfloat16 numbers are exact in float32; ``1e-5 (|q| + |b|)²`` more covers the float32 steps
    around it. The projection and the rest's norm are computed in float32 too: each of
    ``(Pq, r_q)`` and ``(Pb, r_b)`` is off by at most ``e = ((D+k) sqrt(k) + 4) 2^-24`` of its norm
    (the two float32 products ``q P`` and ``(q P) Pᵀ``, each within ``g(n) sqrt(k) |q|`` since
    ``|P|`` has Frobenius norm ``sqrt(k)``, and the subtraction), which moves ``sqrt(L)`` by at most
    ``2e(|q| + |b|)``. Rounding the sum to bfloat16 adds ``u``
    of it, so the approximate ``A`` is within ``K' + u L'`` of the ``L'`` of those float32 values,
    ``K' = (1+u) K``, and an entry with ``L <= U`` has
    ``A <= (1+u)(sqrt(U) + 2e(|q| + |b|))² + K'``: those are the candidates. The comparison is made
    on the bfloat16 bit patterns as 16-bit integers (their order for non-negative numbers; a
    negative ``A`` is always a candidate), the ceiling rounded up to bfloat16 first. It is about
    2.5 times faster than the float32 search on one core (docs/engine.md)."""
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    entries, dim = bank.shape
    u = BFLOAT16_UNIT_ROUNDOFF
    rounded = (1 + u) ** 2 - 1
    split = u * u + 2 * dim * FLOAT32_UNIT_ROUNDOFF
    kept = screen.basis.shape[1]
    summed = (kept + 5) * FLOAT32_UNIT_ROUNDOFF
    drift = ((dim + kept) * math.sqrt(kept) + 4) * FLOAT32_UNIT_ROUNDOFF  # of (Pq, r_q), per |q|
    largest = screen.max_norm
    chunk = max(1, SCREEN_BLOCK_ELEMENTS // entries)
    distances = torch.empty(queries.shape[0])
    indices = torch.empty(queries.shape[0], dtype=torch.long)
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk]
        centred = block - screen.centre
        squared = squared_norms(centred)
        projected, rest = _project(centred, screen.basis)
        high, low = _bfloat16_parts(squared)
        ones = torch.ones(len(block), 2)
        extended = torch.cat(
            [-2 * projected, -2 * rest.unsqueeze(1), ones, high.unsqueeze(1), low.unsqueeze(1)], 1
        )
        approximate = (extended.bfloat16() @ screen.extended.T).view(torch.int16).numpy()
        # any entry's distance bounds the nearest one's; the lowest approximate bound is a close one
        first = torch.from_numpy(approximate.argmin(axis=1))
        upper = (block - bank[first]).pow_(2).sum(dim=1)
        norms = squared.sqrt()
        reach = (norms + largest) ** 2
        bound = 2 * rounded * norms * largest + split * (squared + largest**2) + summed * (1 + u) ** 2 * reach
        reachable = ((1 + 1e-5) * upper).sqrt() + 2 * drift * (norms + largest)
        ceiling = (1 + u) * reachable**2 + (1 + u) * (bound + 1e-5 * reach + 1e-30)
        rows, cols = _at_most(approximate, _bfloat16_bits_up(ceiling))
        if len(rows) > SCREEN_MAX_CANDIDATES * len(block):  # far outside the basis: search in float32
            block_distances, block_where = nearest(block, bank)
            indices[start : start + chunk] = block_where[:, 0]
            distances[start : start + chunk] = block_distances[:, 0]
            continue
        squared_exact = (block[rows] - bank[cols]).pow_(2).sum(dim=1)
        best = torch.full((len(block),), math.inf).scatter_reduce_(0, rows, squared_exact, "amin")
        hit = squared_exact == best[rows]
        where = torch.full((len(block),), entries, dtype=torch.long)
        where.scatter_reduce_(0, rows[hit], cols[hit], "amin")
        # only a query with non-finite features has no candidate: NaN, as the float32 search gives
        unmatched = where == entries
        where[unmatched], best[unmatched] = 0, math.nan
        indices[start : start + chunk] = where
        distances[start : start + chunk] = best.sqrt_()
    return distances.unsqueeze(1), indices.unsqueeze(1)


def _project(centred: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows' projections on ``basis`` (orthonormal columns) and the norms of what is left: the rest
    is formed as a vector, since the difference of the squared norms would lose the small rests'
    digits to cancellation."""
    projected = centred @ basis
    return projected, torch.linalg.vector_norm(centred - projected @ basis.T, dim=1)


def _bfloat16_parts(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` (float32) as two bfloat16 numbers (returned as float32) whose sum is within
    ``u²`` of them: the rounded value and the rounded remainder."""
    high = values.bfloat16().float()
    return high, (values - high).bfloat16().float()


def _bfloat16_bits_up(values: torch.Tensor) -> npt.NDArray[np.int16]:
    """The bit patterns, as 16-bit integers, of positive float32 ``values`` rounded up to bfloat16;
    a value that is not finite gives the largest pattern, so that every entry passes below it."""
    bits = (values.view(torch.int32) + 0xFFFF) >> 16
    bits[~torch.isfinite(values)] = 0x7FFF
    return bits.numpy().astype(np.int16)


def _at_most(
    values: npt.NDArray[np.int16], ceilings: npt.NDArray[np.int16]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the entries of ``values`` (Q, N) at most their row's ceiling (Q,).
    numpy's comparison and flatnonzero: about ten times faster than torch's here (docs/engine.md)."""
    flat = torch.from_numpy(np.flatnonzero(values <= ceilings[:, None]))
    return flat // values.shape[1], flat % values.shape[1]
