"""MCA building blocks: the faiss index, log features, the cascade's plumbing, the reference systems."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onevision.comparison.references import KNNRetriever, PopularityRetriever, RandomRetriever
from onevision.config import EvaluateConfig, MCAConfig
from onevision.mca.cascade import CascadeSizes, LinearScorer, MCACascade
from onevision.mca.features import FEATURES, Catalog, FoldStats, LogStats, PairCounts, pair_features, query_folds
from onevision.mca.index import ItemIndex, gpu_available, resolve_factory
from onevision.retrieval import Retriever, exact_knn, top_k


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    n, d = 400, 16
    emb = _unit(rng.standard_normal((n, d)))
    item_ids = np.arange(n, dtype=np.int64) * 10 + 5  # ids are not rows
    catalog = Catalog(item_ids, rng.integers(0, 4, n), rng.integers(0, 6, n), (0.3 * rng.standard_normal(n)).astype(np.float32),
                      np.array([f"b{i}" for i in range(6)]))
    log = pd.DataFrame({
        "query_id": np.repeat(np.arange(300), 10),
        "user_id": np.repeat(rng.integers(0, 30, 300), 10),
        "item_row": rng.integers(0, n, 3000),
        "position": np.tile(np.arange(10), 300),
        "click": (rng.random(3000) < 0.2).astype(float),
    })
    log["order"] = log["click"] * (rng.random(3000) < 0.5)
    return emb, item_ids, catalog, log


# --------------------------------------------------------------------------- index


def test_flat_index_is_exact_and_maps_ids(world):
    emb, item_ids, *_ = world
    index = ItemIndex.build(emb, item_ids, index_type="Flat", use_gpu="never")
    ids, scores = index.search(emb[:5], 3)
    assert ids[:, 0].tolist() == item_ids[:5].tolist()  # each item is its own nearest neighbour
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    brute = np.argsort(-(emb[:5] @ emb.T), axis=1)[:, :3]
    assert (ids == item_ids[brute]).all()
    assert index.search(emb[:2], 1000)[0][:, 400:].tolist() == [[-1] * 600] * 2  # padded beyond the catalog


@pytest.mark.parametrize("index_type", ["IVF", "IVF64,Flat", "HNSW16"])
def test_ann_indexes_find_most_neighbours(world, index_type):
    emb, item_ids, *_ = world
    index = ItemIndex.build(emb, item_ids, index_type=index_type, nprobe=4, ef_search=64, use_gpu="never")
    exact = ItemIndex.build(emb, item_ids, index_type="Flat", use_gpu="never")
    a, b = index.search(emb[:50], 10)[0], exact.search(emb[:50], 10)[0]
    overlap = np.mean([len(np.intersect1d(x, y)) / 10 for x, y in zip(a, b, strict=True)])
    assert overlap > 0.6


def test_ivf_lists_are_clamped_to_the_catalog():
    assert resolve_factory("IVF4096,Flat", 400) == "IVF10,Flat"
    assert resolve_factory("IVF", 100_000) == "IVF1264,Flat"  # 4 sqrt(N)
    assert resolve_factory("IVF", 10_000) == "IVF256,Flat"  # ... but at least 39 items per list
    assert resolve_factory("IVF16,PQ4", 10_000) == "IVF16,PQ4"
    assert resolve_factory("HNSW32", 10) == "HNSW32"


def test_index_round_trip_and_gpu_fallback(world, tmp_path):
    emb, item_ids, *_ = world
    index = ItemIndex.build(emb, item_ids, index_type="IVF8,Flat", use_gpu="auto")  # no GPU here: a CPU index, no error
    assert index.on_gpu is gpu_available()
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path, nprobe=index.nprobe)
    np.testing.assert_array_equal(index.search(emb[:7], 5)[0], loaded.search(emb[:7], 5)[0])
    loaded.set_search_params(nprobe=8)  # every list visited: IVF-Flat becomes exact
    exact = ItemIndex.build(emb, item_ids, index_type="Flat", use_gpu="never")
    np.testing.assert_array_equal(loaded.search(emb[:7], 5)[0], exact.search(emb[:7], 5)[0])
    if not gpu_available():
        with pytest.raises(RuntimeError, match="no GPU"):
            ItemIndex.build(emb, item_ids, index_type="Flat", use_gpu="always")


# --------------------------------------------------------------------------- features


def test_pair_counts():
    counts = PairCounts(np.array([0, 0, 1, 2]), np.array([1, 1, 0, 3]), np.array([1.0, 2.0, 5.0, 1.0]), n_b=4)
    assert counts.get(np.array([0, 1, 2, -1, 7]), np.array([1, 0, 3, 1, 1])).tolist() == [3.0, 5.0, 1.0, 0.0, 0.0]


def test_unknown_users_get_population_values(world):
    *_, catalog, log = world
    stats = LogStats(log, catalog)
    rows = np.array([[0, 1, 2]])
    names = ("user_cat_lift", "user_brand_lift", "user_price_pref", "user_activity")
    feats = pair_features(stats, stats.user_rows(np.array([-1])), cand_rows=rows, sims=np.zeros((1, 3)), top_sim=np.zeros(1), neighbour_cats=np.zeros((1, 2)), names=names)
    np.testing.assert_allclose(feats, 0.0, atol=1e-6)
    known = pair_features(stats, stats.user_rows(np.array([log.user_id[0]])), cand_rows=rows, sims=np.zeros((1, 3)), top_sim=np.zeros(1), neighbour_cats=np.zeros((1, 2)), names=names)
    assert np.abs(known).sum() > 0


def test_out_of_fold_features_equal_statistics_without_the_fold(world):
    """The invariant that keeps labels out of training features: fold exclusion == stats of the other folds."""
    *_, catalog, log = world
    fold = query_folds(log["query_id"].to_numpy(), 3, seed=0)
    stats, fold_stats = LogStats(log, catalog), FoldStats(log, catalog, fold)
    rng = np.random.default_rng(1)
    users = log["user_id"].to_numpy()[:40:10]  # (4,) users of the first four queries
    q_fold = fold[:40:10]
    cands = rng.integers(0, len(catalog.item_ids), (4, 6))
    args = {"sims": np.full((4, 6), 0.5), "top_sim": np.ones(4), "neighbour_cats": rng.integers(0, 4, (4, 3))}
    got = pair_features(stats, stats.user_rows(users), cand_rows=cands, **args, names=FEATURES, exclude=fold_stats.exclusion(users, q_fold, cands))
    for q in range(4):
        others = log[fold != q_fold[q]]
        ref_stats = LogStats(others, catalog)
        # population shares and global rates stay those of the full log (they are not per-row label carriers)
        for name in ("cat_share", "brand_share", "global_ctr", "global_cvr"):
            setattr(ref_stats, name, getattr(stats, name))
        want = pair_features(ref_stats, ref_stats.user_rows(users[q : q + 1]), cand_rows=cands[q : q + 1],
                             **{key: value[q : q + 1] for key, value in args.items()}, names=FEATURES)
        np.testing.assert_allclose(got[q : q + 1], want, rtol=1e-5, atol=1e-5)


def test_catalog_from_items_aligns_rows():
    items = pd.DataFrame({"item_id": [7, 3, 5], "category": [0, 1, 0], "brand": ["a", "b", "a"], "price": [10.0, 20.0, 30.0]})
    catalog = Catalog.from_items(items, np.array([3, 5, 7]))
    assert catalog.category.tolist() == [1, 0, 0]
    np.testing.assert_allclose(catalog.lpr, np.log([1.0, 30 / 20, 10 / 20]), rtol=1e-6)
    assert catalog.rows_of(np.array([7, 3, 99])).tolist() == [2, 0, -1]
    with pytest.raises(ValueError, match="missing"):
        Catalog.from_items(items, np.array([3, 4]))


# --------------------------------------------------------------------------- cascade plumbing


class _ConstantRanker:
    """Scores by the first feature only (sim): a ranker that keeps visual order."""

    kind = "test"

    def score(self, x):
        return x[:, 0]


class _IdentityEncoder:
    dim = 16

    def embed(self, images):
        return _unit(images.reshape(len(images), -1).astype(np.float32))


def _cascade(world, recall_k=50, prerank_k=20):
    emb, item_ids, catalog, log = world
    names = ("sim",)
    prerank = LinearScorer(names, np.zeros(1, np.float32), np.ones(1, np.float32), np.ones(1, np.float32), 0.0)
    return MCACascade(encoder=_IdentityEncoder(), index=ItemIndex.build(emb, item_ids, index_type="Flat", use_gpu="never"), catalog=catalog,
                      stats=LogStats(log, catalog), prerank=prerank, ranker=_ConstantRanker(), ranker_features=("sim",),
                      sizes=CascadeSizes(recall_k=recall_k, prerank_k=prerank_k, neighbours=5))


def test_top_k_orders_best_first():
    scores = np.array([[0.1, 0.9, 0.5, -np.inf], [3.0, 2.0, 1.0, 0.0]])
    assert top_k(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert top_k(scores, 10).tolist() == [[1, 2, 0, 3], [0, 1, 2, 3]]


def test_exact_knn_equals_faiss_flat_search():
    """The numpy helper (serving's kNN) and faiss' flat index (the evaluation's kNN reference) agree."""
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    query = items[rng.integers(0, 300, 20)] + 0.1 * rng.normal(size=(20, 16)).astype(np.float32)
    rows, scores = exact_knn(query, items, 7)
    flat = ItemIndex.build(items, np.arange(300), index_type="Flat", use_gpu="never")
    ids, ref = flat.search(query, 7)
    assert rows.tolist() == ids.tolist() and np.allclose(scores, ref, atol=1e-5)
    assert exact_knn(query, items[:5], 7)[0].shape == (20, 5)  # fewer items than k: all of them, best first


def test_cascade_shapes_order_and_tail(world):
    emb, item_ids, *_ = world
    cascade = _cascade(world)
    assert isinstance(cascade, Retriever)
    images = (emb[:6] * 100).reshape(6, 4, 4)  # the identity encoder reads these back as the item embeddings
    result = cascade.retrieve(images, np.arange(6), k=30)  # k beyond the short list: the pre-ranked tail follows
    assert result.item_ids.shape == (6, 30) and set(result.timings) == {"encode", "recall", "prerank", "rank"}
    assert result.item_ids[:, 0].tolist() == item_ids[:6].tolist()
    assert all(len(set(row)) == 30 for row in result.item_ids)  # no repeats
    assert (np.diff(result.scores, axis=1) <= 0).all()  # best first, the tail below the short list
    exact = ItemIndex.build(emb, item_ids, index_type="Flat", use_gpu="never").search(emb[:6], 30)[0]
    assert (result.item_ids == exact).all()  # sim-only models keep visual order
    assert cascade.retrieve(images, np.arange(6), k=80).item_ids[:, 50:].tolist() == [[-1] * 30] * 6  # padded past recall_k
    no_ranker = cascade.without_ranker()
    assert no_ranker.name == "mca_no_ranker" and "rank" not in no_ranker.retrieve(images, np.arange(6), 5).timings
    assert cascade.name == "mca" and cascade.use_ranker


def test_cascade_config_checks():
    with pytest.raises(ValueError, match="prerank_k"):
        MCAConfig(recall_k=50, prerank_k=100)
    with pytest.raises(ValueError, match="increasing"):
        EvaluateConfig(ks=[10, 5])
    with pytest.raises(ValueError):
        MCAConfig(ranker_features=["sim", "colour"])


# --------------------------------------------------------------------------- references


def test_random_is_distinct_and_seeded(world):
    _, item_ids, *_ = world
    images = np.zeros((4, 2, 2), np.uint8)
    a = RandomRetriever(item_ids, seed=3).retrieve(images, np.zeros(4), 50).item_ids
    b = RandomRetriever(item_ids, seed=3).retrieve(images, np.zeros(4), 50).item_ids
    assert (a == b).all() and all(len(set(row)) == 50 for row in a) and np.isin(a, item_ids).all()
    assert RandomRetriever(item_ids[:5], seed=0).retrieve(images, np.zeros(4), 8).item_ids[:, 5:].tolist() == [[-1] * 3] * 4


def test_popularity_and_knn(world):
    emb, item_ids, *_ = world
    pop = PopularityRetriever(np.array([1, 2, 3, 4]), np.array([5.0, 9.0, 5.0, 0.0]))
    assert pop.retrieve(np.zeros((2, 1, 1), np.uint8), np.zeros(2), 3).item_ids.tolist() == [[2, 1, 3]] * 2
    knn = KNNRetriever(_IdentityEncoder(), item_ids, emb, use_gpu="never")
    assert knn.retrieve((emb[:3] * 100).reshape(3, 4, 4), np.zeros(3), 1).item_ids[:, 0].tolist() == item_ids[:3].tolist()
