"""Ranking metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onevision.evaluation.metrics import (
    bootstrap_ci,
    category_lookup,
    category_precision_at_k,
    hit_rate_at_k,
    latency_summary,
    ndcg_at_k,
    pad_item_lists,
    paired_delta_ci,
    pareto_front,
    ratio_of_sums,
    recall_at_k,
    reciprocal_rank,
    relevance_matrix,
)

# three queries, four slots each; -1 is an empty slot
RANKED = np.array([
    [5, 3, 9, 1],  # target 3 at rank 2
    [7, 8, -1, -1],  # target 2 absent
    [2, 4, 6, 8],  # target 2 at rank 1
])
TARGET = np.array([[3], [2], [2]])


def test_hit_rate_and_recall_single_target():
    assert hit_rate_at_k(RANKED, TARGET, 1).tolist() == [0, 0, 1]
    assert hit_rate_at_k(RANKED, TARGET, 2).tolist() == [1, 0, 1]
    # one relevant item per query: recall == hit rate
    np.testing.assert_array_equal(recall_at_k(RANKED, TARGET, 4), hit_rate_at_k(RANKED, TARGET, 4))


def test_mrr_and_mrr_at_k():
    assert reciprocal_rank(RANKED, TARGET).tolist() == [0.5, 0.0, 1.0]
    assert reciprocal_rank(RANKED, TARGET, k=1).tolist() == [0.0, 0.0, 1.0]


def test_ndcg_single_target():
    # rank 2 -> 1/log2(3); rank 1 -> 1; absent -> 0 (ideal DCG is 1 for one relevant item)
    np.testing.assert_allclose(ndcg_at_k(RANKED, TARGET, 4), [1 / math.log2(3), 0.0, 1.0])
    np.testing.assert_allclose(ndcg_at_k(RANKED, TARGET, 1), [0.0, 0.0, 1.0])


def test_multi_relevant_recall_ndcg():
    ranked = np.array([[1, 2, 3, 4]])
    relevant = np.array([[4, 2, 9]])  # 9 never retrieved
    assert recall_at_k(ranked, relevant, 2).tolist() == [1 / 3]
    assert recall_at_k(ranked, relevant, 4).tolist() == [2 / 3]
    assert hit_rate_at_k(ranked, relevant, 1).tolist() == [0.0]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)  # hits at ranks 2 and 4
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # three relevant, all could fit in 4
    np.testing.assert_allclose(ndcg_at_k(ranked, relevant, 4), [dcg / idcg])
    # at K=2 the ideal has only two slots
    np.testing.assert_allclose(ndcg_at_k(ranked, relevant, 2), [(1 / math.log2(3)) / (1 + 1 / math.log2(3))])
    assert reciprocal_rank(ranked, relevant).tolist() == [0.5]


def test_padding_and_duplicates_never_count():
    ranked = np.array([[-1, 4, 4]])
    relevant = np.array([[4, -1]])
    assert relevance_matrix(ranked, relevant).tolist() == [[False, True, False]]
    assert recall_at_k(ranked, relevant, 3).tolist() == [1.0]
    # a query without relevant items scores 0, not nan
    assert recall_at_k(ranked, np.array([[-1]]), 3).tolist() == [0.0]
    assert ndcg_at_k(ranked, np.array([[-1]]), 3).tolist() == [0.0]


def test_k_checks():
    with pytest.raises(ValueError, match="k=5"):
        hit_rate_at_k(RANKED, TARGET, 5)
    with pytest.raises(ValueError, match=">= 1"):
        hit_rate_at_k(RANKED, TARGET, 0)


def test_category_precision():
    lookup = category_lookup(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9]), np.array([0, 1, 1, 0, 1, 0, 0, 1, 1]))
    assert lookup(np.array([[3, 100, -1]])).tolist() == [[1, -1, -1]]
    target_cat = np.array([1, 1, 1])
    # row 0: 5,3,9,1 -> cats 1,1,1,0 ; row 1: 7,8,-,- -> 0,1 ; row 2: 2,4,6,8 -> 1,0,0,1
    np.testing.assert_allclose(category_precision_at_k(RANKED, target_cat, lookup, 4), [0.75, 0.25, 0.5])
    np.testing.assert_allclose(category_precision_at_k(RANKED, target_cat, lookup, 1), [1.0, 0.0, 1.0])


def test_pad_item_lists():
    assert pad_item_lists([[1, 2], [], [3]]).tolist() == [[1, 2], [-1, -1], [3, -1]]
    assert pad_item_lists([[], []]).tolist() == [[-1], [-1]]


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(0).normal(1.0, 1.0, 500)
    lo, hi = bootstrap_ci(values, n_resamples=500, seed=3)
    assert lo < values.mean() < hi
    assert (lo, hi) == bootstrap_ci(values, n_resamples=500, seed=3)
    # the half-width is about 1.96 * sd / sqrt(n)
    assert abs((hi - lo) / 2 - 1.96 / math.sqrt(500)) < 0.03
    assert bootstrap_ci(np.full(10, 2.0), n_resamples=50) == (2.0, 2.0)


def test_ratio_bootstrap_and_paired_delta():
    orders, clicks = np.array([0.0, 1.0, 1.0, 0.0]), np.array([1.0, 2.0, 1.0, 0.0])
    assert ratio_of_sums(orders, clicks) == 0.5
    assert ratio_of_sums(orders, np.zeros(4)) == 0.0
    lo, hi = bootstrap_ci((orders, clicks), ratio_of_sums, n_resamples=200, seed=0)
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    delta, lo, hi = paired_delta_ci(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0]), n_resamples=100)
    assert delta == 1.0 and lo == hi == 1.0  # a constant paired difference has no spread


def test_latency_summary_in_ms():
    out = latency_summary(np.array([0.001, 0.002, 0.003, 0.004]))
    assert out["mean_ms"] == pytest.approx(2.5)
    assert out["p50_ms"] == pytest.approx(2.5)
    assert out["p99_ms"] == pytest.approx(3.97)


def test_pareto_front():
    # (quality, cost): b dominates c; a is cheapest; d is best
    points = [(0.5, 1.0), (0.7, 2.0), (0.6, 3.0), (0.9, 10.0)]
    assert pareto_front(points) == [0, 1, 3]
