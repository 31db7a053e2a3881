"""Coreset selection and nearest-neighbour search on tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from services.vision import knn
from services.vision.coreset import greedy_coreset


def naive_greedy(points: torch.Tensor, n_select: int, first: int) -> list[int]:
    chosen = [first]
    while len(chosen) < n_select:
        distances = torch.cdist(points, points[chosen]).min(dim=1).values
        chosen.append(int(distances.argmax()))
    return chosen


def test_coreset_picks_the_far_outliers() -> None:
    generator = torch.Generator().manual_seed(1)
    cluster = torch.randn(500, 8, generator=generator) * 0.1
    outliers = torch.tensor([[10.0] * 8, [-10.0] * 8, [10.0, -10.0] * 4])
    points = torch.cat([cluster, outliers])
    chosen = set(greedy_coreset(points, 4, projection_dim=None, progress=False).tolist())
    assert {500, 501, 502} <= chosen


def test_coreset_matches_naive_farthest_point_selection() -> None:
    points = torch.randn(300, 16, generator=torch.Generator().manual_seed(2))
    chosen = greedy_coreset(points, 25, projection_dim=None, seed=3, progress=False).tolist()
    assert chosen == naive_greedy(points, 25, chosen[0])
    assert len(set(chosen)) == 25


def test_coreset_in_projected_space_still_covers_every_rare_cluster() -> None:
    """One common pattern and 19 rare ones in 128-d: the coreset must keep a point of each."""
    generator = torch.Generator().manual_seed(4)
    centres = torch.randn(20, 128, generator=generator) * 5
    sizes = [1500] + [10] * 19
    points = torch.cat(
        [c + 0.2 * torch.randn(n, 128, generator=generator) for c, n in zip(centres, sizes, strict=False)]
    )
    owner = torch.repeat_interleave(torch.arange(20), torch.tensor(sizes))
    chosen = greedy_coreset(points, 40, projection_dim=32, progress=False)
    assert set(owner[chosen].tolist()) == set(range(20))
    random_pick = torch.randperm(len(points), generator=generator)[:40]
    assert len(set(owner[random_pick].tolist())) < 20  # what plain subsampling would lose


def test_coreset_returns_everything_when_asked_for_more() -> None:
    assert greedy_coreset(torch.randn(5, 3), 10, progress=False).tolist() == [0, 1, 2, 3, 4]


def test_nearest_equals_brute_force_in_chunks(monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    mp.setattr(knn, "MAX_BLOCK_ELEMENTS", 997)  # forces many uneven chunks
    try:
        generator = torch.Generator().manual_seed(6)
        queries, bank = torch.randn(333, 24, generator=generator), torch.randn(211, 24, generator=generator)
        distances, indices = knn.nearest(queries, bank, k=3)
        expected = torch.cdist(queries, bank).topk(3, dim=1, largest=False)
        assert torch.equal(indices, expected.indices)
        assert torch.allclose(distances, expected.values, atol=1e-4)
        _d1, i1 = knn.nearest(queries, bank, k=1)
        assert torch.equal(i1[:, 0], expected.indices[:, 0])
    finally:
        mp.undo()


def test_nearest_distance_to_itself_is_zero_not_nan() -> None:
    bank = torch.randn(50, 10) * 10
    distances, indices = knn.nearest(bank, bank)
    assert torch.equal(indices[:, 0], torch.arange(50))
    assert not torch.isnan(distances).any()
    assert distances.max() < 0.05  # float32 rounding of |q|^2 - 2qb + |b|^2, clamped before sqrt


def near_ties(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bank entries in tight pairs (0.2% apart) and queries between them: bfloat16 products alone
    (8 significant bits) often pick the wrong one of a pair."""
    generator = torch.Generator().manual_seed(seed)
    centres = 3.0 + torch.randn(400, 96, generator=generator)  # far from the origin, like features
    bank = torch.cat([centres, centres + 0.002 * torch.randn(400, 96, generator=generator)])
    queries = centres[:300] + 0.003 * torch.randn(300, 96, generator=generator)
    return queries, bank


def test_screened_search_is_exact_where_bfloat16_alone_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knn, "MAX_BLOCK_ELEMENTS", 7 * 800)  # several blocks, the last one short
    queries, bank = near_ties(2)
    brute = torch.cdist(queries.double(), bank.double())
    want_distances, want = brute.min(dim=1)
    distances, where = knn.nearest_screened(queries, bank, knn.BfloatScreen.of(bank))
    assert where.shape == (300, 1) and distances.shape == (300, 1)
    assert torch.equal(where[:, 0], want)
    assert torch.allclose(distances[:, 0].double(), want_distances, rtol=1e-5, atol=1e-6)
    # the bfloat16 ranking by itself gets a good share of these wrong: the screen's check matters
    products = queries.bfloat16() @ bank.bfloat16().T
    rough = ((bank * bank).sum(dim=1) - 2 * products.float()).argmin(dim=1)
    assert (rough != want).float().mean() > 0.1


def test_screened_search_equals_plain_search_on_spread_data() -> None:
    generator = torch.Generator().manual_seed(3)
    bank = torch.randn(2000, 128, generator=generator).relu()
    queries = torch.randn(1500, 128, generator=generator).relu()
    distances, where = knn.nearest_screened(queries, bank, knn.BfloatScreen.of(bank))
    plain_distances, plain_where = knn.nearest(queries, bank)
    assert (where == plain_where).float().mean() > 0.999  # float32 rounding may split exact ties
    assert torch.allclose(distances, plain_distances, atol=1e-4)
    with torch.no_grad():
        itself, at = knn.nearest_screened(bank[:5], bank, knn.BfloatScreen.of(bank))
    assert torch.equal(at[:, 0], torch.arange(5)) and float(itself.max()) < 1e-3


def test_screened_search_is_exact_for_queries_far_outside_the_bank() -> None:
    """Defective patches lie far from every good one: |q| much larger than the bank's norms, where
    the squared norms dominate the screen's sums and their rounding matters most."""
    generator = torch.Generator().manual_seed(5)
    bank = 3.0 + torch.randn(600, 64, generator=generator)
    queries = torch.cat([40 * torch.randn(200, 64, generator=generator), bank[:100] + 1e-3])
    distances, where = knn.nearest_screened(queries, bank, knn.BfloatScreen.of(bank))
    want_distances, want = torch.cdist(queries.double(), bank.double()).min(dim=1)
    assert torch.equal(where[:, 0], want)
    assert torch.allclose(distances[:, 0].double(), want_distances, rtol=1e-5, atol=1e-4)


def test_screened_search_is_exact_where_the_squared_norms_decide() -> None:
    """Queries near the bank's centre and entries on a shell of radius about 10: the nearest entry
    is decided by |b|² (about 100, whose bfloat16 spacing is 0.5) to within a few hundredths, and
    every squared distance is about 100, so the product's rounding to bfloat16 is at its largest."""
    generator = torch.Generator().manual_seed(6)
    directions = F.normalize(torch.randn(400, 32, generator=generator), dim=1)
    radii = 10 + 0.02 * torch.randn(400, 1, generator=generator)
    bank = torch.cat([directions, -directions]) * torch.cat([radii, radii.flip(0)])
    queries = 0.05 * torch.randn(300, 32, generator=generator)
    distances, where = knn.nearest_screened(queries, bank, knn.BfloatScreen.of(bank))
    want_distances, want = torch.cdist(queries.double(), bank.double()).min(dim=1)
    assert torch.equal(where[:, 0], want)
    assert torch.allclose(distances[:, 0].double(), want_distances, rtol=1e-6)


def test_screened_search_is_exact_with_a_basis_smaller_than_the_features() -> None:
    """Features whose spread falls off with the dimension, as a backbone's do: the screen keeps a
    few leading directions and bounds the rest by its norm, and finds the same entries, near ties
    (pairs 0.2% apart) included."""
    generator = torch.Generator().manual_seed(8)
    falloff = 0.93 ** torch.arange(128.0)
    centres = 2.0 + torch.randn(800, 128, generator=generator) * falloff
    bank = torch.cat([centres, centres + 0.002 * torch.randn(800, 128, generator=generator) * falloff])
    queries = torch.cat(
        [
            centres[:500] + 0.003 * torch.randn(500, 128, generator=generator) * falloff,
            2.0 + torch.randn(500, 128, generator=generator) * falloff,
        ]
    )
    screen = knn.BfloatScreen.of(bank)
    assert 8 <= screen.basis.shape[1] < 64
    distances, where = knn.nearest_screened(queries, bank, screen)
    want_distances, want = torch.cdist(queries.double(), bank.double()).min(dim=1)
    assert torch.equal(where[:, 0], want)
    assert torch.allclose(distances[:, 0].double(), want_distances, rtol=1e-5, atol=1e-6)


def test_screened_search_falls_back_to_float32_for_queries_outside_the_basis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entries spread in 8 directions and, less, in 56 others; a basis of the 8 (forced) and queries
    far along the other 56: the screen's lower bounds cannot tell the entries apart, and each block
    is searched in float32, as exactly."""
    monkeypatch.setattr(knn, "SCREEN_KEPT_SPREAD", 0.5)
    monkeypatch.setattr(knn, "SCREEN_BLOCK_ELEMENTS", 40 * 500)  # several blocks
    generator = torch.Generator().manual_seed(7)
    bank = torch.cat(
        [10 * torch.randn(500, 8, generator=generator), torch.randn(500, 56, generator=generator)], 1
    )
    queries = torch.cat([torch.zeros(100, 8), 30 * torch.randn(100, 56, generator=generator)], 1)
    screen = knn.BfloatScreen.of(bank)
    assert screen.basis.shape == (64, 8)
    searched: list[int] = []
    plain = knn.nearest

    def counted(block: torch.Tensor, entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        searched.append(len(block))
        return plain(block, entries)

    monkeypatch.setattr(knn, "nearest", counted)
    distances, where = knn.nearest_screened(queries, bank, screen)
    want_distances, want = torch.cdist(queries.double(), bank.double()).min(dim=1)
    assert torch.equal(where[:, 0], want)
    assert torch.allclose(distances[:, 0].double(), want_distances, rtol=1e-5)
    assert sum(searched) == 100  # every block fell back


def test_the_screen_ceiling_is_rounded_up_to_the_next_bfloat16() -> None:
    values = torch.tensor([1.0, 1.001, 3.0e-6, 7.5e4, float("inf"), float("nan")])
    bits = knn._bfloat16_bits_up(values)
    rounded = torch.from_numpy(bits.astype("int32") << 16).view(torch.float32)
    assert torch.equal(rounded[:4], torch.tensor([1.0, 1.0078125, 3.0040e-6, 75264.0]).bfloat16().float())
    assert bool((rounded[:4] >= values[:4]).all())
    # below each, the next smaller bfloat16 is under the value: the rounding is to the nearest above
    below = torch.from_numpy((bits[:4].astype("int32") - 1) << 16).view(torch.float32)
    assert bool((below[1:4] < values[1:4]).all()) and float(below[0]) < 1.0
    assert list(bits[4:]) == [0x7FFF, 0x7FFF]  # not finite: every entry passes


def test_screened_search_gives_nan_for_a_non_finite_query_like_the_plain_search() -> None:
    bank = torch.randn(50, 16, generator=torch.Generator().manual_seed(4))
    queries = bank[:3].clone()
    queries[1, 5] = float("nan")
    distances, where = knn.nearest_screened(queries, bank, knn.BfloatScreen.of(bank))
    assert torch.isnan(distances[1, 0]) and torch.isnan(knn.nearest(queries, bank)[0][1, 0])
    assert where[1, 0] == 0 and torch.equal(where[[0, 2], 0], torch.tensor([0, 2]))


def test_screened_search_refuses_an_empty_bank() -> None:
    bank = torch.zeros(0, 8)
    with pytest.raises(ValueError, match="empty"):
        knn.nearest_screened(torch.zeros(2, 8), bank, knn.BfloatScreen.of(bank))
