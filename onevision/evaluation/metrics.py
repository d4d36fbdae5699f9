"""Ranking metrics: small pure functions over (Q, K) arrays of item ids.

Every system and every report uses these functions (evaluation stage,
benchmarks, tests), so a number means the same thing everywhere. Conventions:

* ``ranked``: int64 (Q, K), best first; ``-1`` is an empty slot (never relevant).
* ``relevant``: int64 (Q, R), the relevant items of each query, ``-1`` padded;
  a query with no relevant item scores 0 on every metric (callers normally
  filter such queries out first, see :func:`pad_item_lists`).
* Per-query functions return float64 (Q,) so that means, bootstrap intervals
  and paired comparisons all start from the same arrays.

Relevance is binary. With exactly one relevant item per query (exact-item
search: the photographed product) ``recall_at_k`` equals ``hit_rate_at_k``;
they differ on the click/order test sets, where a query can have several
relevant items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def pad_item_lists(lists: Sequence[Sequence[int]], width: int | None = None) -> np.ndarray:
    """Ragged lists of item ids -> int64 (Q, width) padded with -1."""
    width = max((len(x) for x in lists), default=0) if width is None else width
    out = np.full((len(lists), max(width, 1)), -1, np.int64)
    for row, items in enumerate(lists):
        items = list(items)[:width]
        out[row, : len(items)] = items
    return out


def relevance_matrix(ranked: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """bool (Q, K): ``True`` where the ranked item is relevant to its query."""
    ranked = np.asarray(ranked)
    relevant = np.asarray(relevant)
    if relevant.ndim == 1:
        relevant = relevant[:, None]
    if ranked.shape[0] != relevant.shape[0]:
        raise ValueError(f"ranked has {ranked.shape[0]} queries, relevant {relevant.shape[0]}")
    hits = np.zeros(ranked.shape, bool)
    for col in range(relevant.shape[1]):  # R is small (1 for exact-item, a few clicks otherwise)
        rel = relevant[:, col : col + 1]  # (Q, 1)
        hits |= (ranked == rel) & (rel >= 0)
    # An item listed twice counts once (a retriever should not repeat items; if it does, no credit).
    if hits.any():
        first = _first_occurrence(ranked)
        hits &= first
    return hits


def _first_occurrence(ranked: np.ndarray) -> np.ndarray:
    """bool (Q, K): True at the first position of each item id in its row."""
    order = np.argsort(ranked, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ranked, order, axis=1)
    new = np.ones(ranked.shape, bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    first = np.empty_like(new)
    np.put_along_axis(first, order, new, axis=1)
    return first


def _n_relevant(relevant: np.ndarray) -> np.ndarray:
    relevant = np.asarray(relevant)
    if relevant.ndim == 1:
        relevant = relevant[:, None]
    return (relevant >= 0).sum(axis=1)


def _check_k(ranked: np.ndarray, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > ranked.shape[1]:
        raise ValueError(f"k={k} but only {ranked.shape[1]} items were ranked per query")


def hit_rate_at_k(ranked: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """HR@K per query: 1 if any relevant item is in the top K, else 0."""
    _check_k(ranked, k)
    return relevance_matrix(ranked[:, :k], relevant).any(axis=1).astype(np.float64)


def hits_at_k(ranked: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Per query: how many of its relevant items are in the top K (float, for means and bootstraps)."""
    _check_k(ranked, k)
    return relevance_matrix(ranked[:, :k], relevant).sum(axis=1).astype(np.float64)


# "orders" in a config (gates, pruning guard) means the best orders measurement the evaluation has:
# the user simulator's where one exists (the demo shop), else the replay of the logged orders (a catalog
# import with a search log). Both are per 1,000 queries, higher is better.
ORDERS = "orders"
ORDERS_METRICS = ("sim_orders_per_1k", "logged_orders_per_1k")
ORDERS_LABELS = {"sim_orders_per_1k": "simulated orders / 1k", "logged_orders_per_1k": "logged orders shown / 1k"}


def resolve_metric(name: str, available: Any) -> str:
    """``orders`` -> the first of :data:`ORDERS_METRICS` in ``available`` (a mapping or key collection);
    any other name unchanged. With neither present, the simulator's key (so "missing" names it)."""
    if name != ORDERS:
        return name
    keys = set(available or ())
    return next((key for key in ORDERS_METRICS if key in keys), ORDERS_METRICS[0])


def recall_at_k(ranked: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Recall@K per query: share of the query's relevant items found in the top K."""
    _check_k(ranked, k)
    found = relevance_matrix(ranked[:, :k], relevant).sum(axis=1)
    n_rel = _n_relevant(relevant)
    return np.divide(found, n_rel, out=np.zeros(len(found)), where=n_rel > 0)


def ndcg_at_k(ranked: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """NDCG@K per query with binary gains and the usual 1/log2(rank+1) discount."""
    _check_k(ranked, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (K,)
    dcg = (relevance_matrix(ranked[:, :k], relevant) * discount).sum(axis=1)
    ideal_hits = np.minimum(_n_relevant(relevant), k)
    idcg = np.concatenate([[0.0], np.cumsum(discount)])[ideal_hits]
    return np.divide(dcg, idcg, out=np.zeros(len(dcg)), where=idcg > 0)


def reciprocal_rank(ranked: np.ndarray, relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    """RR@K per query: 1 / rank of the first relevant item within the top K (0 when absent).

    ``k=None`` uses the whole ranked list (MRR over what the system returned).
    """
    k = ranked.shape[1] if k is None else k
    _check_k(ranked, k)
    hits = relevance_matrix(ranked[:, :k], relevant)
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def category_precision_at_k(ranked: np.ndarray, target_category: np.ndarray, item_category: Callable[[np.ndarray], np.ndarray], k: int) -> np.ndarray:
    """Share of the top-K slots holding an item of the target's category (empty slots count as misses).

    ``item_category`` maps item ids (any shape) to category ids, -1 for unknown ids.
    """
    _check_k(ranked, k)
    top = ranked[:, :k]
    cats = item_category(top)
    same = (cats == np.asarray(target_category)[:, None]) & (top >= 0)
    return same.mean(axis=1)


def category_lookup(item_ids: np.ndarray, categories: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised item id -> category function for :func:`category_precision_at_k` (-1: unknown id)."""
    item_ids = np.asarray(item_ids, np.int64)
    order = np.argsort(item_ids)
    sorted_ids = np.append(item_ids[order], np.iinfo(np.int64).max)  # sentinel: searchsorted never runs off the end
    sorted_cats = np.append(np.asarray(categories, np.int64)[order], -1)

    def lookup(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(sorted_ids, ids)
        return np.where(sorted_ids[pos] == ids, sorted_cats[pos], -1)

    return lookup


def bootstrap_ci(
    values: np.ndarray | Sequence[np.ndarray],
    statistic: Callable[..., float] | None = None,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval over queries (``scipy.stats.bootstrap``, seeded).

    ``values`` is one per-query array, or a tuple of aligned per-query arrays
    that are resampled together (e.g. orders and clicks for a conversion rate,
    with ``statistic=lambda o, c: o.sum() / c.sum()``). Default statistic: the mean.
    """
    arrays = [np.asarray(values, np.float64)] if isinstance(values, np.ndarray) else [np.asarray(v, np.float64) for v in values]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap arrays must have the same length")
    if n == 0:
        return (float("nan"), float("nan"))
    if n == 1:  # one query: nothing to resample (scipy asks for two)
        point = float(arrays[0][0]) if statistic is None else float(statistic(*arrays))
        return (point, point)
    from scipy import stats  # lazy: scipy.stats only for the intervals; the metrics themselves are numpy

    res = stats.bootstrap(
        tuple(arrays), np.mean if statistic is None else statistic, n_resamples=n_resamples, confidence_level=level,
        method="percentile", paired=True, vectorized=statistic is None, rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """sum(num) / sum(den), 0 when the denominator is 0 (conversion = orders / clicks)."""
    den = float(np.sum(denominator))
    return float(np.sum(numerator)) / den if den > 0 else 0.0


def latency_summary(seconds: np.ndarray) -> dict[str, float]:
    """Per-call latencies (seconds) -> mean, std and p50/p95/p99 in milliseconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        return {k: float("nan") for k in ("mean_ms", "std_ms", "p50_ms", "p95_ms", "p99_ms")}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"mean_ms": float(ms.mean()), "std_ms": float(ms.std()), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (quality, cost) points not dominated by another (higher quality, lower cost is better).

    The shape of faiss ``contrib.evaluation.OperatingPoints``; returned in order of increasing cost.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best = [], -np.inf
    for i in order:
        if points[i][0] > best:
            front.append(i)
            best = points[i][0]
    return front


def paired_delta_ci(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a - b) and its percentile bootstrap interval, resampling queries jointly (paired comparison)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    lo, hi = bootstrap_ci(diff, n_resamples=n_resamples, level=level, seed=seed)
    return float(diff.mean()) if diff.size else float("nan"), lo, hi


def json_safe(value: Any) -> Any:
    """Floats rounded to 6 places, NaN/inf as None, through dicts and lists: metrics as JSON writes them."""
    if isinstance(value, float):
        return round(value, 6) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
