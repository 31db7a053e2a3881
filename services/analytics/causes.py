"""Which process parameters, in which ranges, separate defective parts from good ones.

For every process parameter recorded on the matching frames:

1. **Best range.** The parameter's values are binned on round edges (about 40 bins over its
   observed range); every edge is a candidate threshold, and the side (below / at or above) with
   the higher outcome rate is the risky range. The threshold with the largest likelihood-ratio
   statistic (G) of the 2×2 table wins, among splits that leave at least ``min_side`` frames on
   each side. The rate ratio comes with a 95 % confidence interval (Katz, on the log scale).
2. **Adjustment for parameters that move together.** The risky ranges of the strongest
   candidates are crossed in one table (one cell per combination of in/out of each range) and a
   logistic regression of the outcome on all the range indicators is fitted to it. Each
   parameter is judged by the likelihood-ratio test for dropping it *while the others stay in*:
   a parameter that only moves with a causal one (a sensor downstream of it, say) explains
   nothing the causal one does not, and drops. The ranking is by that adjusted statistic.
   Parameters that lose their effect are reported as *explained by* the candidate whose range
   they overlap most.

The outcome is an NG verdict unless another is named (a defect location, severity or cluster).
Everything is computed from counts the store aggregates (:class:`AnalyticsStore`), so the same
ranking runs on SQLite and Elasticsearch. p-values are not corrected for the search over
thresholds: read them as a ranking, and confirm a finding on a later period.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from services.storage.analytics_query import AnalyticsQuery, GroupBy, QueryError
from services.storage.ports import AnalyticsStore, ParamStats
from services.storage.query import InspectionQuery

Side = Literal["<", "≥"]
Status = Literal["cause", "explained", "weak"]
OUTCOME_FIELDS = ("verdict", "defect_location", "severity", "cluster_id")
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Cause:
    """One parameter's risky range and how strongly it separates the outcome."""

    param: str
    side: Side
    threshold: float
    frames_in: int
    hits_in: int
    frames_out: int
    hits_out: int
    rate_ratio: float
    rate_ratio_ci: tuple[float, float]
    g_statistic: float
    p_value: float
    adjusted_odds_ratio: float | None = None
    adjusted_ci: tuple[float, float] | None = None
    adjusted_z: float | None = None
    adjusted_p: float | None = None
    status: Status = "weak"
    explained_by: str | None = None
    adjusted_for: str | None = None
    levels: tuple[float, ...] = ()
    """The bin edges the adjustment uses (``threshold`` among them)."""

    @property
    def rate_in(self) -> float:
        return self.hits_in / self.frames_in

    @property
    def rate_out(self) -> float:
        return self.hits_out / self.frames_out

    def sentence(self, outcome: str = "NG rate") -> str:
        """E.g. ``NG rate 4.1x when mould_temp_c < 55.5 (42% vs 10%, n = 312, 95% CI 3.6-4.7)``."""
        low, high = self.rate_ratio_ci
        text = (
            f"{outcome} {self.rate_ratio:.1f}x when {self.param} {self.side} {self.threshold:g} "
            f"({self.rate_in:.1%} vs {self.rate_out:.1%}, n = {self.frames_in}, 95% CI {low:.1f}-{high:.1f})"
        )
        if self.status == "explained" and self.explained_by:
            text += f"; explained by {self.explained_by}"
        elif self.adjusted_odds_ratio is not None and self.adjusted_ci is not None and self.adjusted_for:
            a_low, a_high = self.adjusted_ci
            text += (
                f"; odds ratio {self.adjusted_odds_ratio:.1f} ({a_low:.1f}-{a_high:.1f}) "
                f"with {self.adjusted_for} held fixed"
            )
        return text


@dataclass(frozen=True)
class CauseReport:
    """The ranking: causes first (strongest adjusted effect first), then the explained and weak."""

    outcome: str
    frames: int
    hits: int
    causes: list[Cause] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def base_rate(self) -> float:
        return self.hits / self.frames if self.frames else 0.0


def outcome_filters(filters: InspectionQuery, outcome: InspectionQuery | None) -> tuple[InspectionQuery, str]:
    """The filters of the outcome's frames (the base filters plus the outcome's fields) and a label."""
    outcome = outcome or InspectionQuery(verdict="NG")
    fields = {name: getattr(outcome, name) for name in OUTCOME_FIELDS if getattr(outcome, name) is not None}
    if not fields:
        raise QueryError(f"the outcome needs one of {', '.join(OUTCOME_FIELDS)}")
    for name, value in fields.items():
        current = getattr(filters, name)
        if current is not None and current != value:
            raise QueryError(f"the filters ask for {name}={current} and the outcome for {name}={value}")
    label = (
        "NG rate"
        if fields == {"verdict": "NG"}
        else "rate of " + ", ".join(f"{k}={v}" for k, v in fields.items())
    )
    return filters.model_copy(update=fields), label


def rank_causes(
    store: AnalyticsStore,
    filters: InspectionQuery | None = None,
    outcome: InspectionQuery | None = None,
    *,
    bins: int = 40,
    min_side: int = 30,
    alpha: float = 1e-4,
    min_odds_ratio: float = 2.0,
    max_adjusted: int = 6,
) -> CauseReport:
    """Rank the process parameters by how well a range of each separates the outcome (see module)."""
    filters = filters or InspectionQuery()
    hit_filters, label = outcome_filters(filters, outcome)
    stats = store.parameter_stats(filters)
    total = _frames(store, filters)
    hits = _frames(store, hit_filters)
    report = CauseReport(outcome=label, frames=total, hits=hits)
    if total == 0 or hits == 0 or hits == total:
        return report

    for name in sorted(stats):
        found = _best_split(store, filters, hit_filters, name, stats[name], bins, min_side)
        if isinstance(found, str):
            report.skipped[name] = found
        else:
            report.causes.append(found)
    candidates = sorted((c for c in report.causes if c.p_value < alpha), key=lambda c: -c.g_statistic)[
        :max_adjusted
    ]
    adjusted = _adjust(store, filters, hit_filters, candidates, alpha, min_odds_ratio) if candidates else {}
    ranked = [adjusted.get(c.param, c) for c in report.causes]
    order = {"cause": 0, "explained": 1, "weak": 2}
    ranked.sort(
        key=lambda c: (order[c.status], -(c.adjusted_z if c.adjusted_z is not None else 0.0), -c.g_statistic)
    )
    report.causes[:] = ranked
    return report


def _frames(store: AnalyticsStore, filters: InspectionQuery) -> int:
    rows = store.aggregate(AnalyticsQuery(filters=filters, measures=("frames",)))
    return int(rows[0].values["frames"] or 0) if rows else 0


def nice_step(span: float, bins: int) -> float:
    """A round bin width (1, 2, 2.5 or 5 times a power of ten) near ``span / bins``."""
    raw = span / bins
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw)


def _best_split(
    store: AnalyticsStore,
    filters: InspectionQuery,
    hit_filters: InspectionQuery,
    name: str,
    stats: ParamStats,
    bins: int,
    min_side: int,
) -> Cause | str:
    if stats.maximum <= stats.minimum:
        return "constant"
    step = nice_step(stats.maximum - stats.minimum, bins)
    first = math.floor(stats.minimum / step) + 1
    edges = tuple(round(k * step, 12) for k in range(first, math.ceil(stats.maximum / step) + 1))
    edges = tuple(e for e in edges if stats.minimum < e <= stats.maximum)
    if not edges:
        return "too few distinct values"
    group = GroupBy(field=f"param:{name}", edges=edges)
    all_bins = _bin_counts(store, filters, group, len(edges))
    hit_bins = _bin_counts(store, hit_filters, group, len(edges))
    n, k = int(all_bins.sum()), int(hit_bins.sum())
    side_min = max(min_side, n // 100)
    best: Cause | None = None
    best_index = 0
    for i, threshold in enumerate(edges):
        n_below, k_below = int(all_bins[: i + 1].sum()), int(hit_bins[: i + 1].sum())
        n_above, k_above = n - n_below, k - k_below
        if n_below < side_min or n_above < side_min:
            continue
        g = _g_statistic(k_below, n_below, k_above, n_above)
        if best is not None and g <= best.g_statistic:
            continue
        if k_below / n_below >= k_above / n_above:
            side: Side = "<"
            inside, outside = (n_below, k_below), (n_above, k_above)
        else:
            side, inside, outside = "≥", (n_above, k_above), (n_below, k_below)
        ratio, ci = _rate_ratio(inside[1], inside[0], outside[1], outside[0])
        best_index = i
        best = Cause(
            param=name,
            side=side,
            threshold=threshold,
            frames_in=inside[0],
            hits_in=inside[1],
            frames_out=outside[0],
            hits_out=outside[1],
            rate_ratio=ratio,
            rate_ratio_ci=ci,
            g_statistic=g,
            p_value=chi2_sf(g, 1),
        )
    if best is None:
        return f"no threshold leaves {side_min} frames on each side"
    return replace(best, levels=_levels(edges, all_bins, best_index, max(side_min, n // 50)))


def _levels(edges: tuple[float, ...], frames: np.ndarray, cut: int, min_frames: int) -> tuple[float, ...]:
    """The bin edges, merged until every level holds ``min_frames`` frames, ``edges[cut]`` kept:
    as fine as the data allow, so that holding a parameter fixed leaves little of it to a proxy."""
    kept: list[float] = []
    pending = 0
    for i, edge in enumerate(edges):
        pending += int(frames[i])  # frames below this edge not yet in a level
        if pending >= min_frames or i == cut:
            kept.append(edge)
            pending = 0
    if kept and int(frames[len(edges) :].sum()) < min_frames and kept[-1] != edges[cut]:
        kept.pop()  # the top level is too small: merge it into the one below
    return tuple(kept)


def _bin_counts(store: AnalyticsStore, filters: InspectionQuery, group: GroupBy, n_edges: int) -> np.ndarray:
    """Frames per bin: index 0 below the first edge, index i in [e(i-1), e(i)), last at or above."""
    counts = np.zeros(n_edges + 1, dtype=np.int64)
    assert group.edges is not None
    index: dict[float | None, int] = {None: 0, **{edge: i + 1 for i, edge in enumerate(group.edges)}}
    for row in store.aggregate(AnalyticsQuery(filters=filters, group_by=(group,), measures=("frames",))):
        key = row.keys[0]
        assert isinstance(key, tuple)
        counts[index[key[0]]] = int(row.values["frames"] or 0)
    return counts


def _g_statistic(k1: int, n1: int, k2: int, n2: int) -> float:
    """The likelihood-ratio (G) statistic of a 2×2 table: hits/misses by in/out of a range."""
    observed = np.array([[k1, n1 - k1], [k2, n2 - k2]], dtype=float)
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    mask = observed > 0
    return float(2.0 * (observed[mask] * np.log(observed[mask] / expected[mask])).sum())


def _rate_ratio(k1: int, n1: int, k2: int, n2: int) -> tuple[float, tuple[float, float]]:
    """Rate ratio (k1/n1)/(k2/n2) with a 95 % Katz interval (0.5 added to empty cells)."""
    if k1 == 0 or k2 == 0:
        k1, k2, n1, n2 = k1 + 0.5, k2 + 0.5, n1 + 0.5, n2 + 0.5  # type: ignore[assignment]
    ratio = (k1 / n1) / (k2 / n2)
    se = math.sqrt(max(1 / k1 - 1 / n1 + 1 / k2 - 1 / n2, 0.0))
    return ratio, (ratio * math.exp(-_Z95 * se), ratio * math.exp(_Z95 * se))


def _adjust(
    store: AnalyticsStore,
    filters: InspectionQuery,
    hit_filters: InspectionQuery,
    candidates: Sequence[Cause],
    alpha: float,
    min_odds_ratio: float,
) -> dict[str, Cause]:
    """Each candidate re-measured with every other candidate held fixed, one partner at a time: on
    the joint table of the two parameters' levels, the likelihood-ratio test of adding this one's
    levels to a logistic regression on the partner's levels. Its adjusted strength is the weakest
    of these (the partner that explains most of it)."""
    out: dict[str, Cause] = {}
    tables: dict[tuple[str, str], _PairTable] = {}
    for a, b in itertools.combinations(candidates, 2):
        tables[(a.param, b.param)] = _pair_table(store, filters, hit_filters, a, b)
    for cause in candidates:
        worst: tuple[float, str, float, float] | None = None  # (z, partner, log odds, se)
        for other in candidates:
            if other is cause:
                continue
            if (cause.param, other.param) in tables:
                table = tables[(cause.param, other.param)]
            else:
                table = tables[(other.param, cause.param)].swapped()
            z, beta, se = table.effect_of_first(cause)
            if worst is None or z < worst[0]:
                worst = (z, other.param, beta, se)
        if worst is None:  # a single candidate: nothing to adjust for
            out[cause.param] = replace(
                cause, status="cause" if cause.rate_ratio >= min_odds_ratio else "weak"
            )
            continue
        z, partner, beta, se = worst
        p = 0.5 * math.erfc(z / math.sqrt(2.0))
        odds = math.exp(beta)
        status: Status = "cause" if p < alpha and odds >= min_odds_ratio else "explained"
        explained_by = partner if status == "explained" and _overlap(tables, cause, partner) >= 0.2 else None
        if status == "explained" and explained_by is None:
            status = "weak"
        out[cause.param] = replace(
            cause,
            adjusted_odds_ratio=odds,
            adjusted_ci=(math.exp(beta - _Z95 * se), math.exp(beta + _Z95 * se)),
            adjusted_z=z,
            adjusted_p=p,
            status=status,
            explained_by=explained_by,
            adjusted_for=partner,
        )
    return out


@dataclass(frozen=True)
class _PairTable:
    """Frames and hits per (level of A, level of B); levels index the causes' ``levels`` bins."""

    first: Cause
    second: Cause
    frames: np.ndarray  # (levels of first, levels of second)
    hits: np.ndarray

    def swapped(self) -> _PairTable:
        return _PairTable(self.second, self.first, self.frames.T, self.hits.T)

    def effect_of_first(self, cause: Cause) -> tuple[float, float, float]:
        """(z of adding the first's levels to a model on the second's levels, the log odds ratio of
        the first's risky range with the second's levels held fixed, its standard error)."""
        rows, cols = np.nonzero(self.frames)
        n, y = self.frames[rows, cols].astype(float), self.hits[rows, cols].astype(float)
        second = _one_hot(cols, self.frames.shape[1])
        first = _one_hot(rows, self.frames.shape[0])
        _, _, reduced = _logistic_fit(second, y, n)
        _, _, full = _logistic_fit(np.column_stack([second, first]), y, n)
        df = max(1, first.shape[1])
        z = _wilson_hilferty(max(0.0, 2.0 * (full - reduced)), df)
        risky = np.array([float(_risky_level(cause, int(level))) for level in rows])
        beta, cov, _ = _logistic_fit(np.column_stack([risky, second]), y, n)
        return z, float(beta[1]), math.sqrt(max(float(cov[1, 1]), 0.0))


def _pair_table(
    store: AnalyticsStore, filters: InspectionQuery, hit_filters: InspectionQuery, a: Cause, b: Cause
) -> _PairTable:
    groups = (
        GroupBy(field=f"param:{a.param}", edges=a.levels),
        GroupBy(field=f"param:{b.param}", edges=b.levels),
    )
    shape = (len(a.levels) + 1, len(b.levels) + 1)
    tables = []
    for where in (filters, hit_filters):
        table = np.zeros(shape, dtype=np.int64)
        for row in store.aggregate(AnalyticsQuery(filters=where, group_by=groups, measures=("frames",))):
            i, j = (_level_index(cause, key) for cause, key in zip((a, b), row.keys, strict=True))
            table[i, j] = int(row.values["frames"] or 0)
        tables.append(table)
    return _PairTable(a, b, tables[0], tables[1])


def _level_index(cause: Cause, key: object) -> int:
    low = key[0]  # type: ignore[index]
    return 0 if low is None else cause.levels.index(low) + 1


def _risky_level(cause: Cause, level: int) -> bool:
    """Whether level ``level`` (0: below the first level edge) lies in the cause's risky range."""
    cut = cause.levels.index(cause.threshold) + 1  # levels >= cut are at or above the threshold
    return level < cut if cause.side == "<" else level >= cut


def _one_hot(index: np.ndarray, size: int) -> np.ndarray:
    """Dummy columns for every level but the first present one (the reference)."""
    present = sorted(set(index.tolist()))
    return (
        np.column_stack([(index == k).astype(float) for k in present[1:]])
        if len(present) > 1
        else (np.zeros((len(index), 0)))
    )


def _overlap(tables: dict[tuple[str, str], _PairTable], cause: Cause, partner: str) -> float:
    """|φ| between the cause's risky range and the partner's, over their joint table."""
    table = tables.get((cause.param, partner)) or tables[(partner, cause.param)].swapped()
    other = table.second
    risky_a = np.array([_risky_level(cause, i) for i in range(table.frames.shape[0])], dtype=float)
    risky_b = np.array([_risky_level(other, j) for j in range(table.frames.shape[1])], dtype=float)
    w = table.frames / table.frames.sum()
    pa, pb = (w.sum(1) * risky_a).sum(), (w.sum(0) * risky_b).sum()
    both = (w * np.outer(risky_a, risky_b)).sum()
    var = math.sqrt(pa * (1 - pa) * pb * (1 - pb))
    return abs(both - pa * pb) / var if var > 0 else 0.0


def _wilson_hilferty(x: float, df: int) -> float:
    """A χ² statistic as a standard normal z (Wilson–Hilferty): comparable across degrees of
    freedom, and finite where the p-value underflows."""
    k = float(df)
    return ((x / k) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * k))) / math.sqrt(2.0 / (9.0 * k))


def chi2_sf(x: float, df: int) -> float:
    """P(χ² with ``df`` degrees of freedom > x), closed form for integer ``df``."""
    x = max(x, 0.0)
    half = x / 2.0
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(2.0 * x / math.pi) * math.exp(-half) if x > 0 else 0.0
    for i in range(1, (df + 1) // 2):
        total += term
        term *= x / (2 * i + 1)
    return min(1.0, total)


def _logistic_fit(
    x: np.ndarray, hits: np.ndarray, frames: np.ndarray, ridge: float = 1.0, steps: int = 100
) -> tuple[np.ndarray, np.ndarray, float]:
    """Binomial logistic regression on grouped data by damped Newton steps. A weak ridge (a prior
    worth about one frame per coefficient) keeps ranges with no hits, or only hits, finite.
    Returns coefficients (intercept first), their covariance and the log-likelihood."""
    design = np.column_stack([np.ones(len(frames)), x])
    beta = np.zeros(design.shape[1])
    rate = hits.sum() / frames.sum()
    beta[0] = math.log(rate / (1 - rate))
    penalty = ridge * np.eye(design.shape[1])
    penalty[0, 0] = 0.0

    def objective(b: np.ndarray) -> float:
        return _loglik(design @ b, hits, frames) - 0.5 * float(b @ penalty @ b)

    current = objective(beta)
    for _ in range(steps):
        p = _sigmoid(design @ beta)
        gradient = design.T @ (hits - frames * p) - penalty @ beta
        hessian = (design * (frames * p * (1 - p))[:, None]).T @ design + penalty
        delta = np.linalg.solve(hessian, gradient)
        step = 1.0
        while step > 1e-6 and objective(beta + step * delta) < current - 1e-12:
            step /= 2.0
        beta = beta + step * delta
        previous, current = current, objective(beta)
        if abs(current - previous) < 1e-10:
            break
    p = _sigmoid(design @ beta)
    hessian = (design * (frames * p * (1 - p))[:, None]).T @ design + penalty
    return beta, np.linalg.inv(hessian), _loglik(design @ beta, hits, frames)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _loglik(z: np.ndarray, hits: np.ndarray, frames: np.ndarray) -> float:
    """Binomial log-likelihood at logits ``z`` (log(1 + e^z) computed without overflow)."""
    softplus = np.logaddexp(0.0, z)
    return float((hits * (z - softplus) - (frames - hits) * softplus).sum())
