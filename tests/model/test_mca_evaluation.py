"""Behaviour of the MCA cascade and the evaluation harness on a tiny demo shop.

A 300-item demo shop (the real demo builder and simulator) with a fake encoder:
the fake stands in for the aligned encoder (stage ``align_encoder``,
minutes of training): it knows which product every query photo shows and
embeds the photo as that product's embedding plus seeded noise, so nearest
neighbours find the product often but not always, as a trained encoder does.
Item embeddings cluster by category, so look-alikes share a category.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onevision import paths
from onevision.config import Config
from tests.model.conftest import DEMO_SHOP, needs_fashion_mnist
from tests.support.markdown_tables import table_rows
from tests.support.projects import build_project

pytestmark = needs_fashion_mnist  # every test uses the tiny demo shop

TINY = [
    *DEMO_SHOP, "data.n_queries=3000",
    "mca.recall_k=100", "mca.prerank_k=50", "mca.ranker_train_candidates=30",
    "evaluate.latency_queries=5", "evaluate.warmup=1", "evaluate.bootstrap=50", "evaluate.batch_size=128",
]


class FakeEncoder:
    """ImageEncoder test double: photo -> its product's embedding + noise, looked up by pixels."""

    def __init__(self, images: np.ndarray, embeddings: np.ndarray):
        self.dim = embeddings.shape[1]
        self._lookup = {img.tobytes(): emb for img, emb in zip(images, embeddings, strict=True)}

    def embed(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._lookup[img.tobytes()] for img in images]).astype(np.float32)  # (N, dim)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def fake_embeddings(items, queries, dim: int = 32, query_noise: float = 0.35, seed: int = 0):
    """(item ids, item embeddings (N, dim), query embeddings (Q, dim)) with category structure."""
    rng = np.random.default_rng(seed)
    n_cat = int(items["category"].max()) + 1
    centroids = _unit(rng.standard_normal((n_cat, dim)))
    item_ids = items["item_id"].to_numpy(np.int64)
    item_emb = _unit(centroids[items["category"].to_numpy()] + 0.35 * rng.standard_normal((len(items), dim)))
    row = {item: i for i, item in enumerate(item_ids)}
    target = item_emb[[row[i] for i in queries["item_id"]]]
    query_emb = _unit(target + query_noise * rng.standard_normal(target.shape))
    return item_ids, item_emb, query_emb


def build_tiny_project(root: Path, overrides: list[str] | None = None) -> tuple[Config, FakeEncoder]:
    """Demo tables (written as validated), the split, fake item embeddings; returns the config and the fake encoder."""
    from onevision.encoder.api import decode_image_column, save_item_embeddings

    project = build_project(root, "demo", profile="small", overrides=TINY + list(overrides or []))
    cfg, tables = project.cfg, project.tables
    item_ids, item_emb, query_emb = fake_embeddings(tables["items"], tables["queries"], seed=cfg.seed)
    save_item_embeddings(root, item_ids, item_emb)
    images = decode_image_column(tables["queries"], channels=cfg.data.image_channels)
    return cfg, FakeEncoder(images, query_emb)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """(cfg, root, fake encoder, trained MCA cascade, training facts); the cascade is also saved to models/mca."""
    from onevision.evaluation.cost import limit_threads
    from onevision.mca.train import MCA_DIR, train_cascade

    root = tmp_path_factory.mktemp("tiny_project")
    cfg, encoder = build_tiny_project(root)
    with limit_threads(1):
        cascade, facts = train_cascade(cfg, root, encoder=encoder)
    cascade.save(root / MCA_DIR)
    return cfg, root, encoder, cascade, facts


@pytest.fixture(scope="module")
def held_out(tiny_project):
    """VAL + TEST queries (more queries than TEST alone: steadier comparisons)."""
    from onevision.data.split import load_split
    from onevision.data.tables import read_tables
    from onevision.encoder.api import decode_image_column

    cfg, root, *_ = tiny_project
    queries = read_tables(root / paths.VALIDATED, ("queries",))["queries"]
    held = [load_split(root / paths.SPLITS, queries, s) for s in ("val", "test")]
    import pandas as pd

    frame = pd.concat(held, ignore_index=True)
    return (decode_image_column(frame, channels=cfg.data.image_channels), frame["user_id"].to_numpy(np.int64),
            frame["item_id"].to_numpy(np.int64))


def _simulator(root: Path, seed: int):
    from onevision.data.simulator import UserSimulator
    from onevision.data.tables import read_tables

    tables = read_tables(root / paths.VALIDATED, ("items", "user_tastes"))
    return UserSimulator.from_tables(tables["items"], tables["user_tastes"], seed=seed)


# --------------------------------------------------------------------------- MCA behaviour


@pytest.mark.slow
def test_mca_hr10_far_above_random_and_not_below_recall_alone(tiny_project, held_out):
    from onevision.comparison.references import KNNRetriever, RandomRetriever
    from onevision.evaluation.metrics import hit_rate_at_k

    cfg, root, encoder, cascade, _ = tiny_project
    images, users, target = held_out
    item_ids = cascade.catalog.item_ids
    with_ranker = cascade.retrieve(images, users, 10).item_ids
    # recall alone: the cascade's own index, visual order (= exact kNN on a Flat index)
    recall_only = KNNRetriever(encoder, item_ids, cascade.index.cpu_index.reconstruct_n(0, len(item_ids))).retrieve(images, users, 10).item_ids
    random = RandomRetriever(item_ids, seed=0).retrieve(images, users, 10).item_ids
    hr = {name: hit_rate_at_k(ids, target[:, None], 10).mean() for name, ids in
          (("mca", with_ranker), ("recall", recall_only), ("random", random))}
    assert hr["random"] < 0.1
    assert hr["mca"] > 0.6 and hr["mca"] > 5 * hr["random"]
    assert hr["mca"] >= hr["recall"], hr


@pytest.mark.slow
def test_personalised_ranker_raises_simulated_orders(tiny_project, held_out):
    cfg, root, encoder, cascade, _ = tiny_project
    images, users, target = held_out
    shown = cfg.data.impressions_per_query
    sim = _simulator(root, cfg.seed)
    query = encoder.embed(images)
    recall_only = cascade.index.search(query, shown)[0]
    orders = {
        "mca": sim.score(users, target, cascade.retrieve(images, users, shown).item_ids)["expected_orders"],
        "recall": sim.score(users, target, recall_only)["expected_orders"],
    }
    # paired: the same queries and users, only the ordering differs
    assert orders["mca"].mean() > orders["recall"].mean() * 1.05, {k: v.mean() for k, v in orders.items()}


@pytest.mark.slow
def test_lambdamart_tuning_is_recorded_and_the_pointwise_ranker_kept(tiny_project):
    """metrics/mca.json holds the VAL search (every trial, the chosen one), the depth sweep and both rankers' VAL numbers."""
    cfg, root, encoder, cascade, facts = tiny_project
    ltr = facts["ltr"]
    assert len(ltr["trials"]) == min(cfg.mca.ltr_trials, len(cfg.mca.ltr_num_leaves) * len(cfg.mca.ltr_learning_rate) * len(cfg.mca.ltr_feature_fraction))
    assert ltr["chosen"]["val_ndcg@10"] == max(t["val_ndcg@10"] for t in ltr["trials"])
    assert ltr["position_debias"] == "lightgbm_position" and facts["ranker"] == "lambdarank"
    assert set(facts["ranker_grades"]) <= {"0", "1", "2", "3"} and int(facts["ranker_grades"]["2"]) > 0
    assert {"val_ndcg@10_mca", "val_ndcg@10_mca_pointwise", "val_ndcg@10_no_ranker"} <= set(facts)
    sweep = facts["depth_sweep"]
    recall = [sweep["recall"][k]["exact"] for k in sorted(sweep["recall"], key=lambda k: int(k[1:]))]
    assert recall == sorted(recall)  # a deeper cut never keeps fewer
    assert [c.name for c in cascade.ablations()] == ["mca_pointwise"]


@pytest.mark.slow
def test_cascade_round_trips_through_disk(tiny_project, held_out):
    from onevision.mca.cascade import MCACascade
    from onevision.mca.train import MCA_DIR

    cfg, root, encoder, cascade, _ = tiny_project
    images, users, _ = held_out
    loaded = MCACascade.load(root / MCA_DIR, encoder)
    a, b = cascade.retrieve(images[:64], users[:64], 20), loaded.retrieve(images[:64], users[:64], 20)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    stages = loaded.stage_candidates(images[:8], users[:8])
    assert [s for s in stages] == ["recall", "prerank", "rank"]
    assert stages["recall"].shape == (8, cfg.mca.recall_k) and stages["prerank"].shape == (8, cfg.mca.prerank_k)


# --------------------------------------------------------------------------- the evaluation


@pytest.mark.slow
def test_evaluation_writes_every_metric_and_is_deterministic(tiny_project, tmp_path):
    from onevision.comparison.stage import run_evaluation

    cfg, root, encoder, *_ = tiny_project
    results = run_evaluation(cfg, root, encoder=encoder)
    assert list(results) == ["mca", "mca_pointwise", "mca_no_ranker", "knn", "popularity", "random"]
    required = [f"{m}@{k}" for m in ("hr", "recall", "ndcg", "cat_precision") for k in cfg.evaluate.ks] + ["mrr"]
    required += [f"{s}_{m}@{k}" for s in ("click", "order") for m in ("hr", "mrr") for k in cfg.evaluate.ks]
    required += [f"sim_{m}{ci}" for m in ("clicks_per_1k", "orders_per_1k", "conversion") for ci in ("", "_ci_lo", "_ci_hi")]
    required += ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "qps", "peak_rss_delta_mb", "peak_traced_mb"]
    for name, metrics in results.items():
        missing = [key for key in required if key not in metrics]
        assert not missing, (name, missing)
    for name in ("mca", "mca_pointwise", "mca_no_ranker"):
        stages = results[name]["stages"]
        assert stages["recall"]["exact_hit"] >= stages["prerank"]["exact_hit"] >= stages["top10"]["exact_hit"]
    assert set(results["mca"]["stage_latency_p50_ms"]) == {"encode", "recall", "prerank", "rank"}
    assert "vs_mca_sim_orders_per_1k_delta" in results["knn"]
    assert {"vs_mca_ndcg@10_delta", "vs_mca_ndcg@10_delta_ci_lo", "vs_mca_ndcg@10_delta_ci_hi"} <= set(results["mca_pointwise"])
    report = (root / "reports/evaluate.md").read_text()
    rows = [row[0] for row in table_rows(report)]
    assert rows.count("mca") >= 3 and "mca_pointwise" in rows
    assert "- MCA baseline: since 2026-12-07 `mca` ranks with LambdaMART" in report  # the baseline change, where people read
    assert (root / "plots/evaluate_quality_latency.png").stat().st_size > 0
    assert (root / "plots/evaluate_per_k.png").stat().st_size > 0

    # same seed, same quality numbers (timings and memory aside)
    again = run_evaluation(cfg, root, encoder=encoder, measure_cost=False)
    timing = ("latency", "qps", "peak_", "stage_ms", "stage_latency")
    for name in results:
        a = {k: v for k, v in results[name].items() if not k.startswith(timing)}
        b = {k: v for k, v in again[name].items() if not k.startswith(timing)}
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), name


@pytest.mark.slow
def test_evaluate_stage_skips_absent_systems(tiny_project, tmp_path):
    """Without models/mca (and without OneVision) the registry yields only what exists."""
    from onevision.comparison.systems import build_systems

    cfg, root, encoder, *_ = tiny_project
    names = [s.name for s in build_systems(cfg, root, encoder=encoder)]
    assert names[:6] == ["mca", "mca_pointwise", "mca_no_ranker", "knn", "popularity", "random"]
    subset = build_systems(cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"systems": ["knn", "random"]})}),
                           root, encoder=encoder)
    assert [s.name for s in subset] == ["knn", "random"]
    (tmp_path / "data").symlink_to(root / "data")  # the data, but no models/mca
    assert [s.name for s in build_systems(cfg, tmp_path, encoder=encoder)] == ["knn", "popularity", "random"]
