"""Exact nearest-neighbour search in chunks, as matrix products (|q|^2 - 2 q.b + |b|^2)."""

from __future__ import annotations

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


def nearest_bfloat16(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_squared: torch.Tensor | None = None,
    bank_bfloat16: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate nearest neighbour, about 1.5x faster on CPUs with bfloat16 matrix units: the bank
    entry is chosen from bfloat16 products, its distance is then computed exactly in float32.

    The distance is never below the exact nearest one; on magnetic-tile patches the same entry is
    chosen for 95% of queries and the distance is 0.02% too large on average (2.7% at worst).
    Returns distances (Q, 1) and indices (Q, 1) like :func:`nearest` with ``k=1``.
    """
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    if bank_squared is None:
        bank_squared = squared_norms(bank)
    if bank_bfloat16 is None:
        bank_bfloat16 = bank.bfloat16()
    chunk = max(1, MAX_BLOCK_ELEMENTS // bank.shape[0])
    indices = []
    for start in range(0, queries.shape[0], chunk):
        products = (queries[start : start + chunk].bfloat16() @ bank_bfloat16.T).float()
        # |q - b|^2 - |q|^2 = |b|^2 - 2 q.b: the same ranking per query
        indices.append(torch.addcmul(bank_squared, products, torch.tensor(-2.0)).argmin(dim=1))
    where = torch.cat(indices)
    distances = torch.linalg.vector_norm(queries - bank[where], dim=1)
    return distances.unsqueeze(1), where.unsqueeze(1)
