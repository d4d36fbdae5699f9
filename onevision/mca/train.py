"""Training the MCA cascade on the TRAIN split (stage ``mca``).

The recall index holds the aligned encoder's catalog item embeddings. Both
models learn from TRAIN-split queries only (the split OneVision trains on):

* **pre-ranker: logistic regression** on six cheap features, fit on the logged
  impressions (clicked or not). It scores several hundred candidates per
  query, so it must cost one small matrix product; a linear model is that, and
  with standardised inputs its weights read as the importance of each signal.
* **ranker: gradient-boosted trees** (scikit-learn ``HistGradientBoostingClassifier``),
  fit on what it will rank at serving: the pre-ranker's top candidates of each
  TRAIN query (``mca.ranker_rows=candidates``). A pair is positive when it is
  the photographed product (the query log says which) or was clicked when the
  logging policy showed it; ordered pairs weigh ``1 + mca.order_weight``.
  Training on the logged impressions alone (``impressions``) inherits the
  logging policy's selection: the ranker then never sees the look-alikes recall
  brings and trades exact-item hits for taste (measured on the small profile:
  VAL HR@10 0.848 vs 0.898 from candidates, at equal simulated orders).

Why trees for the ranker: its inputs are a dozen heterogeneous tabular features
(cosines, smoothed counts, log price ratios) whose effect is mostly in their
interactions (a price preference matters only with the item's price, a brand
lift only for a user with clicks). Trees learn such interactions without
scaling or feature crosses, train in seconds on a few hundred thousand pairs on
one CPU core, and score a 100-item short list in a few milliseconds. Monotone
constraints (more similar never ranks lower, all else equal) keep the visual
match from being overruled where the logs are thin. A neural ranker would need
more interactions than the log holds to beat them. One binary model (rather
than click and order heads) keeps the monotone constraints available and the
serving cost at one model.

User and item statistics of a training pair come from the other folds of the
log (:class:`~onevision.mca.features.FoldStats`), so no feature contains the
pair's own label. ``validation_check`` reports HR@10 and simulated orders of
the cascade, of the cascade without ranker and of recall order alone on the
VAL split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevision import paths
from onevision.config import Config, MCAConfig
from onevision.data.simulator import UserSimulator
from onevision.data.split import load_split
from onevision.data.tables import read_tables
from onevision.evaluation.metrics import hit_rate_at_k
from onevision.mca.cascade import CascadeSizes, LinearScorer, MCACascade
from onevision.mca.features import (
    Catalog,
    FoldStats,
    LogStats,
    impression_log,
    pair_features,
    query_folds,
)
from onevision.mca.index import ItemIndex
from onevision.retrieval import top_k

log = logging.getLogger(__name__)

MCA_DIR = paths.MODELS / "mca"
# +1: a feature the ranker may only reward (more similar ranks higher); -1: only penalise.
MONOTONE = {"sim": 1, "sim_gap": -1, "cat_vote": 1}
# Training rows see user/item statistics of the other folds only (see features.Exclusion).
FEATURE_FOLDS = 5


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x3CA, *stream.encode()]))


@dataclass
class TrainingQueries:
    """TRAIN-split queries with what their (query, item) pairs need: embeddings, recall sets, folds."""

    query_ids: np.ndarray  # (Q,) int64, sorted
    user_ids: np.ndarray  # (Q,)
    user_rows: np.ndarray  # (Q,) rows of LogStats
    target_rows: np.ndarray  # (Q,) index row of the photographed item (-1: not in the catalog)
    fold: np.ndarray  # (Q,) feature fold
    emb: np.ndarray  # (Q, D)
    rows: np.ndarray  # (Q, R) recall set, index rows
    sims: np.ndarray  # (Q, R)
    neighbours: int

    @property
    def top_sim(self) -> np.ndarray:
        return np.where(self.rows[:, 0] >= 0, self.sims[:, 0], 0.0)  # (Q,)

    def neighbour_cats(self, catalog: Catalog) -> np.ndarray:
        near = self.rows[:, : self.neighbours]
        return np.where(near >= 0, catalog.category[np.maximum(near, 0)], -1)  # (Q, m)


def query_context(index: ItemIndex, catalog: Catalog, query_emb: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """(best catalog cosine (Q,), categories of the m nearest items (Q, m)) for each query embedding."""
    rows, sims = index.search_rows(query_emb, neighbours)  # (Q, m)
    top_sim = np.where(rows[:, 0] >= 0, sims[:, 0], 0.0)
    cats = np.where(rows >= 0, catalog.category[np.maximum(rows, 0)], -1)
    return top_sim, cats


def impression_pairs(tq: TrainingQueries, logged: pd.DataFrame, *, stats: LogStats, fold_stats: FoldStats | None,
                     item_emb: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Features of logged impressions (rows of :func:`impression_log`) -> float32 (n, F), at their logged positions.

    ``fold_stats``: subtract the row's own fold from the log statistics (training); None outside them (validation).
    """
    q = np.searchsorted(tq.query_ids, logged["query_id"].to_numpy(np.int64))  # (n,)
    item_rows = logged["item_row"].to_numpy(np.int64)[:, None]  # (n, 1)
    sims = np.einsum("nd,nd->n", tq.emb[q], item_emb[item_rows[:, 0]])[:, None]  # (n, 1)
    exclude = fold_stats.exclusion(tq.user_ids[q], tq.fold[q], item_rows) if fold_stats is not None else None
    feats = pair_features(stats, tq.user_rows[q], cand_rows=item_rows, sims=sims, top_sim=tq.top_sim[q], neighbour_cats=tq.neighbour_cats(stats.catalog)[q], names=names,
                          positions=logged["position"].to_numpy(np.float64)[:, None], exclude=exclude)
    return feats[:, 0, :]  # (n, F)


def candidate_pairs(tq: TrainingQueries, logged: pd.DataFrame, *, stats: LogStats, fold_stats: FoldStats, prerank: LinearScorer,
                    keep: int, names: tuple[str, ...], chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pre-ranker's top ``keep`` recall candidates of each query, as the ranker sees them at serving.

    Returns features (n, F) at position 0 and labels: ``exact`` (the photographed
    product), ``clicked`` and ``ordered`` (logged, when the policy showed it).
    """
    cats = tq.neighbour_cats(stats.catalog)
    feats, cand = [], []
    for start in range(0, len(tq.query_ids), chunk):
        q = slice(start, start + chunk)
        rows, sims = tq.rows[q], tq.sims[q]
        exclude = fold_stats.exclusion(tq.user_ids[q], tq.fold[q], rows)
        x_pre = pair_features(stats, tq.user_rows[q], cand_rows=rows, sims=sims, top_sim=tq.top_sim[q], neighbour_cats=cats[q], names=prerank.names, exclude=exclude)
        top = top_k(np.where(rows >= 0, prerank(x_pre), -np.inf), keep)  # (q, keep)
        rows, sims = np.take_along_axis(rows, top, 1), np.take_along_axis(sims, top, 1)
        exclude = fold_stats.exclusion(tq.user_ids[q], tq.fold[q], rows)
        x = pair_features(stats, tq.user_rows[q], cand_rows=rows, sims=sims, top_sim=tq.top_sim[q], neighbour_cats=cats[q], names=names, exclude=exclude)  # (q, keep, F)
        valid = rows >= 0
        feats.append(x[valid])
        qid = np.broadcast_to(tq.query_ids[q, None], rows.shape)[valid]
        cand.append(pd.DataFrame({"query_id": qid, "item_row": rows[valid], "exact": (rows == tq.target_rows[q, None])[valid]}))
    pairs = pd.concat(cand, ignore_index=True)
    labels = pairs.merge(logged[["query_id", "item_row", "click", "order"]], on=["query_id", "item_row"], how="left")
    return (np.concatenate(feats), pairs["exact"].to_numpy(np.float64),
            labels["click"].fillna(0.0).to_numpy(), labels["order"].fillna(0.0).to_numpy())


def fit_prerank(x: np.ndarray, clicked: np.ndarray, names: tuple[str, ...], seed: int) -> LinearScorer:
    # lazy: scikit-learn ~1.2 s only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    model = LogisticRegression(C=1.0, max_iter=500, random_state=seed)
    model.fit((x - mean) / scale, clicked)
    return LinearScorer(names, mean.astype(np.float32), scale.astype(np.float32), model.coef_[0].astype(np.float32), float(model.intercept_[0]))


def fit_ranker(x: np.ndarray, y: np.ndarray, *, ordered: np.ndarray, names: tuple[str, ...], cfg: MCAConfig, seed: int):
    # lazy: scikit-learn ~1.2 s only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(
        max_iter=cfg.ranker_max_iter,
        learning_rate=cfg.ranker_learning_rate,
        max_leaf_nodes=cfg.ranker_max_leaf_nodes,
        min_samples_leaf=cfg.ranker_min_samples_leaf,
        l2_regularization=1.0,
        monotonic_cst=[MONOTONE.get(name, 0) for name in names],
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=seed,
    )
    model.fit(x, y.astype(np.int64), sample_weight=1.0 + cfg.order_weight * ordered)
    return model


def load_split_logs(root: Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(queries with images, impressions, interactions) of one split, from data/validated."""

    tables = read_tables(root / paths.VALIDATED, ("queries", "impressions", "interactions"))
    queries = load_split(root / paths.SPLITS, tables["queries"], split).sort_values("query_id", kind="mergesort")
    keep = tables["impressions"]["query_id"].isin(queries["query_id"])
    acts = tables["interactions"]["query_id"].isin(queries["query_id"])
    return queries.reset_index(drop=True), tables["impressions"][keep], tables["interactions"][acts]


def training_queries(cfg: Config, root: Path, *, encoder, index: ItemIndex, catalog: Catalog, stats: LogStats, split: str = "train"
                     ) -> tuple[TrainingQueries, pd.DataFrame]:
    """Embed and recall the queries of ``split``; returns them and their impression log."""
    # lazy: torch ~1.3 s only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
    from onevision.encoder.api import decode_image_column

    queries, impressions, interactions = load_split_logs(root, split)
    logged = impression_log(queries, impressions, interactions, catalog)
    emb = encoder.embed(decode_image_column(queries, cfg.data.import_dir, cfg.data.image_channels))  # (Q, D)
    rows, sims = index.search_rows(emb, min(cfg.mca.recall_k, len(catalog.item_ids)))  # (Q, R): never more than the catalog
    query_ids = queries["query_id"].to_numpy(np.int64)
    user_ids = queries["user_id"].to_numpy(np.int64)
    tq = TrainingQueries(
        query_ids=query_ids, user_ids=user_ids, user_rows=stats.user_rows(user_ids),
        target_rows=catalog.rows_of(queries["item_id"].to_numpy(np.int64)),
        fold=query_folds(query_ids, FEATURE_FOLDS, cfg.seed), emb=emb, rows=rows, sims=sims, neighbours=cfg.mca.neighbours,
    )
    return tq, logged


def capped_sizes(recall_k: int, prerank_k: int, neighbours: int, n_items: int) -> CascadeSizes:
    """The configured cuts, none larger than the catalog (a 64-item shop recalls 64, not 500)."""
    if recall_k > n_items:
        log.info("mca: recall_k %d capped at the catalog's %d items", recall_k, n_items)
    recall = min(recall_k, n_items)
    return CascadeSizes(recall_k=recall, prerank_k=min(prerank_k, recall), neighbours=min(neighbours, recall))


def train_cascade(cfg: Config, root: Path, encoder=None) -> tuple[MCACascade, dict[str, Any]]:
    """Build the index, fit the pre-ranker and the ranker on the TRAIN split; return the cascade and facts."""
    # lazy: torch ~1.3 s only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
    from onevision.encoder.api import ENCODER_DIR, ImageEncoder, load_item_embeddings

    m = cfg.mca
    facts: dict[str, Any] = {}
    encoder = encoder or ImageEncoder.load(root / ENCODER_DIR)
    item_ids, item_emb = load_item_embeddings(root)
    items = read_tables(root / paths.VALIDATED, ("items",))["items"]
    catalog = Catalog.from_items(items, item_ids)

    t = time.perf_counter()
    index = ItemIndex.build(item_emb, item_ids, index_type=m.index_type, nprobe=m.nprobe, ef_search=m.ef_search, use_gpu=m.use_gpu, seed=cfg.seed)
    facts["index_build_seconds"] = time.perf_counter() - t
    facts["index"] = index.description
    facts["n_items"] = len(item_ids)

    t = time.perf_counter()
    queries, impressions, interactions = load_split_logs(root, "train")
    stats = LogStats(impression_log(queries, impressions, interactions, catalog), catalog)
    tq, logged = training_queries(cfg, root, encoder=encoder, index=index, catalog=catalog, stats=stats)
    fold_stats = FoldStats(logged, catalog, tq.fold[np.searchsorted(tq.query_ids, logged["query_id"].to_numpy(np.int64))])
    facts["embed_recall_train_queries_seconds"] = time.perf_counter() - t

    # pre-ranker: the logged impressions, clicked or not
    t = time.perf_counter()
    pre_names = tuple(m.prerank_features)
    x = impression_pairs(tq, logged, stats=stats, fold_stats=fold_stats, item_emb=item_emb, names=pre_names)
    prerank = fit_prerank(x, logged["click"].to_numpy(), pre_names, cfg.seed)
    facts["prerank_fit_seconds"] = time.perf_counter() - t

    # ranker
    t = time.perf_counter()
    rank_names = tuple(m.ranker_features)
    parts = []
    if m.ranker_rows in ("candidates", "both"):
        x, exact, clicked, ordered = candidate_pairs(tq, logged, stats=stats, fold_stats=fold_stats, prerank=prerank, keep=m.ranker_train_candidates, names=rank_names)
        parts.append((x, np.maximum(exact, clicked), ordered))
    if m.ranker_rows in ("impressions", "both"):
        x = impression_pairs(tq, logged, stats=stats, fold_stats=fold_stats, item_emb=item_emb, names=rank_names)
        exact = (logged["item_row"].to_numpy() == tq.target_rows[np.searchsorted(tq.query_ids, logged["query_id"].to_numpy())])
        parts.append((x, np.maximum(logged["click"].to_numpy(), exact), logged["order"].to_numpy()))
    x, y, ordered = (np.concatenate(p) for p in zip(*parts, strict=True))
    if len(x) > m.max_train_rows:  # a seeded sample of rows (features are already out of fold)
        keep = np.sort(_rng(cfg.seed, "rows").permutation(len(x))[: m.max_train_rows])
        x, y, ordered = x[keep], y[keep], ordered[keep]
    facts["ranker_features_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    ranker = fit_ranker(x, y, ordered=ordered, names=rank_names, cfg=m, seed=cfg.seed)
    facts["ranker_fit_seconds"] = time.perf_counter() - t
    facts.update({
        "train_queries": len(tq.query_ids), "train_impressions": len(logged),
        "train_clicks": int(logged["click"].sum()), "train_orders": int(logged["order"].sum()),
        "ranker_rows": len(x), "ranker_positives": int(y.sum()), "ranker_iterations": int(ranker.n_iter_),
    })
    facts["prerank_weights"] = {n: round(float(w), 4) for n, w in zip(pre_names, prerank.weights, strict=True)}
    sizes = capped_sizes(m.recall_k, m.prerank_k, m.neighbours, len(item_ids))
    facts.update({"recall_k": sizes.recall_k, "prerank_k": sizes.prerank_k})
    cascade = MCACascade(encoder=encoder, index=index, catalog=catalog, stats=stats, prerank=prerank, ranker=ranker,
                         ranker_features=rank_names, sizes=sizes)
    facts.update(validation_check(cfg, root, cascade))
    return cascade, facts


def validation_check(cfg: Config, root: Path, cascade: MCACascade, k: int = 10) -> dict[str, float]:
    """HR@k and simulated orders per 1k on the VAL split: the cascade, without its ranker, and recall order alone."""
    # lazy: torch ~1.3 s only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
    from onevision.encoder.api import decode_image_column

    queries, _, _ = load_split_logs(root, "val")
    if queries.empty:
        return {}
    emb = cascade.embed(decode_image_column(queries, cfg.data.import_dir, cfg.data.image_channels))
    users, target = queries["user_id"].to_numpy(np.int64), queries["item_id"].to_numpy(np.int64)
    shown = max(k, cfg.data.impressions_per_query)
    lists = {
        "mca": cascade.rank_embeddings(emb, users, shown)[0].item_ids,
        "no_ranker": cascade.without_ranker().rank_embeddings(emb, users, shown)[0].item_ids,
        "recall": cascade.index.search(emb, shown)[0],
    }
    out = {f"val_hr@{k}_{name}": float(hit_rate_at_k(ids, target[:, None], k).mean()) for name, ids in lists.items()}
    tables = read_tables(root / paths.VALIDATED, ("items", "user_tastes"))
    if "user_tastes" in tables:
        sim = UserSimulator.from_tables(tables["items"], tables["user_tastes"], seed=cfg.seed)
        for name, ids in lists.items():
            out[f"val_orders_per_1k_{name}"] = 1e3 * sim.score(users, target, ids[:, : cfg.data.impressions_per_query])["orders_per_query"]
    return out
