"""MCA's LambdaMART ranker (onevision.mca.ltr): grades, groups, position debiasing, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onevision.config import MCAConfig
from onevision.mca.features import Catalog, LogStats
from onevision.mca.ltr import (
    LambdaMARTRanker,
    RankingSet,
    fit_lambdarank,
    graded_relevance,
    group_sizes,
    position_propensity,
    sample_trials,
)
from onevision.mca.train import TrainingQueries, ranking_groups

pytest.importorskip("lightgbm")

NAMES = ("signal", "noise")
SMALL = {"ltr_num_leaves": [7], "ltr_learning_rate": [0.1], "ltr_feature_fraction": [1.0], "ltr_trials": 1,
         "ltr_max_rounds": 60, "ltr_early_stopping": 10, "ltr_min_data_in_leaf": 5}


def synthetic(n_queries: int, seed: int, per_query: int = 12, shown: int = 8) -> RankingSet:
    """Groups whose grade (0..3) is a noisy function of feature 0; feature 1 is noise; positions 0..shown (shown = never)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n_queries, per_query))
    grade = np.digitize(signal + 0.3 * rng.normal(size=signal.shape), [0.3, 1.0, 1.6])
    x = np.stack([signal, rng.normal(size=signal.shape)], axis=-1).astype(np.float32).reshape(-1, 2)
    position = np.minimum(np.argsort(np.argsort(-rng.normal(size=signal.shape), axis=1), axis=1), shown)
    return RankingSet(x, grade.reshape(-1).astype(np.int32), np.repeat(np.arange(n_queries), per_query), position.reshape(-1).astype(np.int32))


def test_graded_relevance_orders_ordered_over_clicked_over_shown():
    exact = np.array([0, 0, 0, 1, 1])
    click = np.array([0, 1, 1, 0, 1])
    order = np.array([0, 0, 1, 0, 1])
    assert graded_relevance(exact, click, order, exact_grade=2).tolist() == [0, 1, 2, 2, 2]
    assert graded_relevance(exact, click, order, exact_grade=3).tolist() == [0, 1, 2, 3, 3]
    assert graded_relevance(exact, click, order, exact_grade=0).tolist() == [0, 1, 2, 0, 2]


def test_group_sizes_need_contiguous_queries():
    assert group_sizes(np.array([5, 5, 5, 2, 9, 9])).tolist() == [3, 1, 2]
    assert group_sizes(np.array([], np.int64)).tolist() == []
    with pytest.raises(ValueError, match="contiguous"):
        group_sizes(np.array([1, 2, 1]))


def test_ranker_on_a_tiny_set_orders_by_graded_relevance():
    cfg = MCAConfig(**SMALL)
    ranker, record = fit_lambdarank(synthetic(300, 0), synthetic(100, 1), names=NAMES, cfg=cfg, seed=0, n_slots=8)
    test = synthetic(200, 2)
    scores = ranker.score(test.x).reshape(200, -1)
    grades = test.label.reshape(200, -1)
    # within a query, a higher grade scores higher on average (pairs of different grade)
    hi, lo = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    better = grades[:, hi] > grades[:, lo]
    assert (scores[:, hi] > scores[:, lo])[better].mean() > 0.85
    assert record["feature_gain"]["signal"] > 0.8
    assert record["chosen"]["rounds"] >= 1 and record["position_debias"] == "lightgbm_position"


def test_ranking_groups_are_candidates_plus_impressions_graded(tmp_path):
    """Per query: the pre-ranker's top candidates and the logged impressions, once each, contiguous, graded."""
    rng = np.random.default_rng(0)
    n, d = 30, 8
    item_emb = rng.normal(size=(n, d)).astype(np.float32)
    item_emb /= np.linalg.norm(item_emb, axis=1, keepdims=True)
    catalog = Catalog(np.arange(n) + 100, rng.integers(0, 3, n), rng.integers(0, 2, n), np.zeros(n, np.float32), np.array(["a", "b"]))
    # query 10 recalls rows 0..5, query 20 rows 6..11; impressions: (query, row, position, click, order)
    logged = pd.DataFrame([(10, 1, 0, 1.0, 1.0), (10, 25, 1, 1.0, 0.0), (10, 2, 2, 0.0, 0.0), (20, 7, 0, 0.0, 0.0), (20, 26, 1, 0.0, 0.0)],
                          columns=["query_id", "item_row", "position", "click", "order"]).assign(user_id=1)
    stats = LogStats(logged, catalog)
    rows = np.array([np.arange(6), np.arange(6, 12)])
    emb = item_emb[[0, 6]]
    tq = TrainingQueries(np.array([10, 20]), np.array([1, 1]), stats.user_rows(np.array([1, 1])), np.array([3, 26]), np.zeros(2, np.int64),
                         emb, rows, np.tile(np.linspace(0.9, 0.4, 6), (2, 1)), neighbours=2)  # recall sims: best first

    class FirstRows:  # a pre-ranker that keeps recall order
        names = ("sim",)

        def __call__(self, x):
            return x[..., 0]

    got = ranking_groups(tq, logged, stats=stats, fold_stats=None, prerank=FirstRows(), keep=4, names=("sim",), item_emb=item_emb,
                         n_slots=3, exact_grade=3)
    assert group_sizes(got.query_ids).tolist() == [5, 5]  # 4 candidates + impressions not among them (25; 26)
    q10 = got.query_ids == 10
    sims = got.x[q10, 0]
    expected_rows = [0, 1, 2, 3, 25]  # candidates in pre-rank order, then the extra impression
    np.testing.assert_allclose(sims, item_emb[expected_rows] @ emb[0], rtol=1e-5)
    assert got.label[q10].tolist() == [0, 2, 0, 3, 1]  # row 1 ordered, row 3 the photographed product, row 25 clicked
    assert got.position[q10].tolist() == [3, 0, 2, 3, 1]  # never shown -> slot 3
    assert got.label[~q10].tolist() == [0, 0, 0, 0, 3]  # query 20's product (26) was only shown


def test_position_debiasing_changes_the_weights_as_expected():
    """Lower slots are examined less: their clicks weigh more (inverse propensity); unshown candidates keep 1."""
    rng = np.random.default_rng(0)
    position = rng.integers(0, 5, 20_000)
    clicked = rng.random(20_000) < 0.3 / (1 + position)  # examination 1 / (1 + k)
    weights = position_propensity(np.r_[position, 5], np.r_[clicked, False], n_slots=5)
    by_slot = [weights[:-1][position == k].mean() for k in range(5)]
    assert by_slot[0] == pytest.approx(1.0) and all(a < b for a, b in zip(by_slot, by_slot[1:], strict=False))
    assert by_slot[4] == pytest.approx(5.0, rel=0.15) and weights[-1] == 1.0
    # and LightGBM's position model changes the ranker: with it the slot-confounded grades are read differently
    data = synthetic(300, 0)
    data.label = np.where(data.position < 2, np.maximum(data.label, 1), data.label).astype(np.int32)  # clicks piled on top slots
    on = fit_lambdarank(data, None, names=NAMES, cfg=MCAConfig(**SMALL), seed=0, n_slots=8)[0]
    off = fit_lambdarank(data, None, names=NAMES, cfg=MCAConfig(**SMALL, ltr_position_debias=False), seed=0, n_slots=8)[0]
    assert not np.allclose(on.score(data.x), off.score(data.x))


def test_ranker_is_deterministic_with_its_seed_and_round_trips(tmp_path):
    cfg = MCAConfig(**{**SMALL, "ltr_num_leaves": [7, 15], "ltr_feature_fraction": [0.5, 1.0], "ltr_trials": 2})
    train, val = synthetic(200, 0), synthetic(80, 1)
    a, rec_a = fit_lambdarank(train, val, names=NAMES, cfg=cfg, seed=3, n_slots=8)
    b, rec_b = fit_lambdarank(train, val, names=NAMES, cfg=cfg, seed=3, n_slots=8)
    np.testing.assert_array_equal(a.score(val.x), b.score(val.x))
    assert [t["val_ndcg@10"] for t in rec_a["trials"]] == [t["val_ndcg@10"] for t in rec_b["trials"]]
    assert sample_trials(cfg, 3) == sample_trials(cfg, 3) and len(sample_trials(cfg, 3)) == 2
    a.save(tmp_path / "r.txt")
    np.testing.assert_allclose(LambdaMARTRanker.load(tmp_path / "r.txt", NAMES).score(val.x), a.score(val.x), rtol=1e-6)
