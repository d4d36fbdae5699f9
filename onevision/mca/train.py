# Long on purpose: stage mca trains recall, pre-ranker and both rankers on one set of TRAIN features.
"""Training the MCA cascade on the TRAIN split (stage ``mca``).

The recall index holds the aligned encoder's catalog item embeddings. Both
models learn from TRAIN-split queries only (the split OneVision trains on):

* **pre-ranker: logistic regression** on six cheap features, fit on the logged
  impressions (clicked or not). It scores several hundred candidates per
  query, so it must cost one small matrix product; a linear model is that, and
  with standardised inputs its weights read as the importance of each signal.
* **ranker: LambdaMART** (LightGBM ``lambdarank``, :mod:`onevision.mca.ltr`),
  trained per query group on what it will rank at serving (the pre-ranker's top
  ``mca.ranker_train_candidates`` of each TRAIN query) plus the query's logged
  impressions, with graded relevance (ordered > clicked > shown; the
  photographed product ``mca.ltr_exact_grade``), LightGBM's position-bias model
  on the logged slots, and a small seeded search of its knobs early-stopped on
  VAL NDCG@10 (recorded in metrics/mca.json). Its features are the pointwise
  ranker's plus what OneVision's leaf head reads (best catalog-view cosine, the
  user's order share of the category), so neither side has an information edge.
* **ablation ``mca_pointwise``: gradient-boosted trees** (scikit-learn
  ``HistGradientBoostingClassifier``), MCA's ranker until 2026-12-07, fit on the
  same candidates: a pair is positive when it is the photographed product or was
  clicked when the logging policy showed it; ordered pairs weigh
  ``1 + mca.order_weight``. Training on the logged impressions alone
  (``mca.ranker_rows=impressions``) inherits the logging policy's selection: the
  ranker then never sees the look-alikes recall brings and trades exact-item
  hits for taste (measured on the small profile: VAL HR@10 0.848 vs 0.898 from
  candidates, at equal simulated orders).

Why trees for the ranker: its inputs are a dozen heterogeneous tabular features
(cosines, smoothed counts, log price ratios) whose effect is mostly in their
interactions (a price preference matters only with the item's price, a brand
lift only for a user with clicks). Trees learn such interactions without
scaling or feature crosses, train in seconds on a few hundred thousand pairs on
one CPU core, and score a 100-item short list in a few milliseconds. Monotone
constraints (more similar never ranks lower, all else equal) keep the visual
match from being overruled where the logs are thin.

User and item statistics of a training pair come from the other folds of the
log (:class:`~onevision.mca.features.FoldStats`), so no feature contains the
pair's own label. ``validation_check`` reports HR@10 and simulated orders of
the cascade, of the cascade without ranker and of recall order alone on the
VAL split, and (``mca.depth_sweep``) the VAL recall of the ordered and the
photographed item at several recall and pre-rank depths.
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
from onevision.evaluation.metrics import hit_rate_at_k, ndcg_at_k
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
from onevision.mca.ltr import MONOTONE, PointwiseRanker, RankingSet, fit_lambdarank, graded_relevance
from onevision.retrieval import top_k

log = logging.getLogger(__name__)

MCA_DIR = paths.MODELS / "mca"
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

    def subset(self, keep: np.ndarray) -> TrainingQueries:
        """The queries at positions ``keep`` (sorted, so query ids stay sorted)."""
        keep = np.sort(keep)
        return TrainingQueries(self.query_ids[keep], self.user_ids[keep], self.user_rows[keep], self.target_rows[keep], self.fold[keep],
                               self.emb[keep], self.rows[keep], self.sims[keep], self.neighbours)

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


def _shown_matrix(tq: TrainingQueries, logged: pd.DataFrame, n_slots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The logged impressions as (Q, S) matrices aligned with ``tq``: item rows (-1 pads), position, click, order."""
    q = np.searchsorted(tq.query_ids, logged["query_id"].to_numpy(np.int64))
    pos = logged["position"].to_numpy(np.int64)
    ok = (q < len(tq.query_ids)) & (pos >= 0) & (pos < n_slots)
    ok[ok] = tq.query_ids[q[ok]] == logged["query_id"].to_numpy(np.int64)[ok]
    shape = (len(tq.query_ids), n_slots)
    rows, click, order = np.full(shape, -1, np.int64), np.zeros(shape), np.zeros(shape)
    rows[q[ok], pos[ok]] = logged["item_row"].to_numpy(np.int64)[ok]
    click[q[ok], pos[ok]] = logged["click"].to_numpy()[ok]
    order[q[ok], pos[ok]] = logged["order"].to_numpy()[ok]
    return rows, np.broadcast_to(np.arange(n_slots), shape), click, order


def ranking_groups(tq: TrainingQueries, logged: pd.DataFrame, *, stats: LogStats, fold_stats: FoldStats | None, prerank: LinearScorer,
                   keep: int, names: tuple[str, ...], item_emb: np.ndarray, n_slots: int, exact_grade: int,
                   chunk: int = 1024) -> RankingSet:
    """Query groups for learning to rank: per query, the pre-ranker's top ``keep`` recall candidates and the logged
    impressions (once each), graded (ordered 2 > clicked 1 > shown 0; the photographed product ``exact_grade``),
    with the logged position (``n_slots`` = never shown). ``fold_stats`` None: no out-of-fold exclusion (VAL)."""
    cats = tq.neighbour_cats(stats.catalog)
    shown_all, pos_all, click_all, order_all = _shown_matrix(tq, logged, n_slots)
    xs, labels, qids, positions = [], [], [], []
    for start in range(0, len(tq.query_ids), chunk):
        q = slice(start, start + chunk)
        users, folds = tq.user_ids[q], tq.fold[q]
        rows, sims = tq.rows[q], tq.sims[q]
        exclude = fold_stats.exclusion(users, folds, rows) if fold_stats is not None else None
        x_pre = pair_features(stats, tq.user_rows[q], cand_rows=rows, sims=sims, top_sim=tq.top_sim[q], neighbour_cats=cats[q], names=prerank.names, exclude=exclude)
        top = top_k(np.where(rows >= 0, prerank(x_pre), -np.inf), keep)  # (q, keep)
        cand = np.take_along_axis(rows, top, 1)
        shown = shown_all[q]
        extra = np.where((shown[:, :, None] == cand[:, None, :]).any(2), -1, shown)  # impressions not among the candidates
        group = np.concatenate([cand, extra], axis=1)  # (q, keep + S)
        valid = group >= 0
        emb = tq.emb[q]
        group_sims = np.einsum("qd,qnd->qn", emb, item_emb[np.maximum(group, 0)])
        match = (group[:, :, None] == shown[:, None, :]) & valid[:, :, None]  # (q, G, S)
        was_shown = match.any(2)
        slot = np.where(was_shown, match.argmax(2), n_slots)
        click = np.take_along_axis(click_all[q], np.minimum(slot, n_slots - 1), 1) * was_shown
        order = np.take_along_axis(order_all[q], np.minimum(slot, n_slots - 1), 1) * was_shown
        exact = group == tq.target_rows[q, None]
        exclude = fold_stats.exclusion(users, folds, group) if fold_stats is not None else None
        x = pair_features(stats, tq.user_rows[q], cand_rows=group, sims=group_sims, top_sim=tq.top_sim[q], neighbour_cats=cats[q], names=names,
                          exclude=exclude, query_emb=emb)  # (q, G, F)
        xs.append(x[valid])
        labels.append(graded_relevance(exact, click, order, exact_grade)[valid])
        qids.append(np.broadcast_to(tq.query_ids[q, None], group.shape)[valid])
        positions.append(slot[valid])
    del pos_all
    return RankingSet(np.concatenate(xs), np.concatenate(labels), np.concatenate(qids), np.concatenate(positions).astype(np.int32))


def fit_prerank(x: np.ndarray, clicked: np.ndarray, names: tuple[str, ...], seed: int) -> LinearScorer:
    # lazy: scikit-learn only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    model = LogisticRegression(C=1.0, max_iter=500, random_state=seed)
    model.fit((x - mean) / scale, clicked)
    return LinearScorer(names, mean.astype(np.float32), scale.astype(np.float32), model.coef_[0].astype(np.float32), float(model.intercept_[0]))


def fit_ranker(x: np.ndarray, y: np.ndarray, *, ordered: np.ndarray, names: tuple[str, ...], cfg: MCAConfig, seed: int):
    # lazy: scikit-learn only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
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
    # lazy: torch only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
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
    # lazy: torch only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
    from onevision.encoder.api import (
        CATALOG,
        ENCODER_DIR,
        VIEW_EMBEDDINGS,
        ImageEncoder,
        load_item_embeddings,
        load_view_embeddings,
    )

    m = cfg.mca
    facts: dict[str, Any] = {}
    encoder = encoder or ImageEncoder.load(root / ENCODER_DIR)
    item_ids, item_emb = load_item_embeddings(root)
    items = read_tables(root / paths.VALIDATED, ("items",))["items"]
    catalog = Catalog.from_items(items, item_ids)
    if (root / VIEW_EMBEDDINGS).exists():  # the catalog views (OneVision's leaf head reads them too)
        views = load_view_embeddings(root)
        catalog = catalog.with_views(views["item_ids"][views["kind"] == CATALOG], views["embeddings"][views["kind"] == CATALOG], item_emb)

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

    # the ablation mca_pointwise: MCA's ranker until 2026-12-07 (a pointwise classifier)
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
    pointwise = fit_ranker(x, y, ordered=ordered, names=rank_names, cfg=m, seed=cfg.seed)
    facts["pointwise_seconds"] = time.perf_counter() - t
    facts.update({"pointwise_rows": len(x), "pointwise_positives": int(y.sum()), "pointwise_iterations": int(pointwise.n_iter_)})
    del x, y, ordered, parts

    # the ranker: LambdaMART on TRAIN query groups, tuned and early-stopped on VAL groups
    t = time.perf_counter()
    ltr_names = tuple(m.ltr_features)
    n_slots = cfg.data.impressions_per_query
    group_args = {"prerank": prerank, "keep": m.ltr_candidates, "names": ltr_names, "item_emb": item_emb, "n_slots": n_slots,
                  "exact_grade": m.ltr_exact_grade}
    ltr_tq = tq
    max_groups = m.ltr_max_rows // (m.ltr_candidates + n_slots)  # a group never holds more rows than that
    if len(tq.query_ids) > max_groups:  # whole queries, seeded: the search costs the same on every profile
        ltr_tq = tq.subset(_rng(cfg.seed, "groups").permutation(len(tq.query_ids))[:max_groups])
    train_set = ranking_groups(ltr_tq, logged, stats=stats, fold_stats=fold_stats, **group_args)
    val_tq, val_logged = training_queries(cfg, root, encoder=encoder, index=index, catalog=catalog, stats=stats, split="val")
    val_set = ranking_groups(val_tq, val_logged, stats=stats, fold_stats=None, **group_args) if len(val_tq.query_ids) else None
    facts["ltr_groups_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    ranker, search = fit_lambdarank(train_set, val_set, names=ltr_names, cfg=m, seed=cfg.seed, threads=m.threads, n_slots=n_slots)
    facts["ltr_fit_seconds"] = time.perf_counter() - t
    facts["ltr"] = search
    facts.update({
        "train_queries": len(tq.query_ids), "train_impressions": len(logged),
        "train_clicks": int(logged["click"].sum()), "train_orders": int(logged["order"].sum()),
        "ranker": "lambdarank", "ranker_rows": len(train_set.x), "ranker_iterations": ranker.best_iteration,
        "ranker_grades": {str(g): int(n) for g, n in zip(*np.unique(train_set.label, return_counts=True), strict=True)},
    })
    facts["prerank_weights"] = {n: round(float(w), 4) for n, w in zip(pre_names, prerank.weights, strict=True)}
    sizes = capped_sizes(m.recall_k, m.prerank_k, m.neighbours, len(item_ids))
    facts.update({"recall_k": sizes.recall_k, "prerank_k": sizes.prerank_k})
    cascade = MCACascade(encoder=encoder, index=index, catalog=catalog, stats=stats, prerank=prerank, ranker=ranker,
                         ranker_features=ltr_names, sizes=sizes,
                         alternatives={"mca_pointwise": (PointwiseRanker(pointwise, rank_names), rank_names)})
    facts.update(validation_check(cfg, root, cascade))
    if m.depth_sweep and len(val_tq.query_ids):
        t = time.perf_counter()
        facts["depth_sweep"] = depth_sweep(cfg, root, cascade, val_tq, val_logged)
        facts["depth_sweep_seconds"] = time.perf_counter() - t
    return cascade, facts


RECALL_DEPTHS = (50, 100, 200, 300, 500, 1000)
PRERANK_DEPTHS = (20, 50, 100, 200)


def depth_sweep(cfg: Config, root: Path, cascade: MCACascade, val_tq: TrainingQueries, val_logged: pd.DataFrame) -> dict[str, Any]:
    """VAL recall of the ordered items (logged orders) and of the photographed item at each recall depth (faiss
    order) and pre-rank depth (the pre-ranker's order of the recall set), and the cascade's VAL NDCG@10 and
    simulated orders at each pre-rank depth: how much the configured cuts lose, measured."""
    n_items = len(cascade.catalog.item_ids)
    depths = sorted({min(d, n_items) for d in RECALL_DEPTHS})
    rows, sims = cascade.index.search_rows(val_tq.emb, depths[-1])  # (Q, Dmax)
    ordered = val_logged[val_logged["order"] > 0]
    oq = np.searchsorted(val_tq.query_ids, ordered["query_id"].to_numpy(np.int64))
    o_item = ordered["item_row"].to_numpy(np.int64)

    def rank_of(ranked_rows: np.ndarray, q: np.ndarray, item: np.ndarray) -> np.ndarray:
        hit = ranked_rows[q] == item[:, None]
        return np.where(hit.any(1), hit.argmax(1), np.iinfo(np.int64).max)

    q_all = np.arange(len(val_tq.query_ids))
    out: dict[str, Any] = {"val_queries": len(q_all), "val_orders": len(o_item)}
    recall_rank = {"ordered": rank_of(rows, oq, o_item), "exact": rank_of(rows, q_all, val_tq.target_rows)}
    out["recall"] = {f"@{d}": {k: round(float((r < d).mean()), 4) if len(r) else None for k, r in recall_rank.items()} for d in depths}
    R = min(cascade.sizes.recall_k, depths[-1])
    stats = cascade.stats
    x = pair_features(stats, stats.user_rows(val_tq.user_ids), cand_rows=rows[:, :R], sims=sims[:, :R], top_sim=val_tq.top_sim,
                      neighbour_cats=val_tq.neighbour_cats(cascade.catalog), names=cascade.prerank.names)
    pre = np.take_along_axis(rows[:, :R], top_k(np.where(rows[:, :R] >= 0, cascade.prerank(x), -np.inf), R), 1)
    pre_rank = {"ordered": rank_of(pre, oq, o_item), "exact": rank_of(pre, q_all, val_tq.target_rows)}
    out["prerank"] = {f"@{d}": {k: round(float((r < d).mean()), 4) if len(r) else None for k, r in pre_rank.items()}
                      for d in PRERANK_DEPTHS if d <= R}
    # the cascade at each pre-rank depth: what a longer short list buys the ranker
    # lazy: torch only where this step needs it
    from onevision.encoder.api import decode_image_column

    queries, _, _ = load_split_logs(root, "val")
    emb = cascade.embed(decode_image_column(queries, cfg.data.import_dir, cfg.data.image_channels))
    users, target = queries["user_id"].to_numpy(np.int64), queries["item_id"].to_numpy(np.int64)
    tables = read_tables(root / paths.VALIDATED, ("items", "user_tastes"))
    sim = UserSimulator.from_tables(tables["items"], tables["user_tastes"], seed=cfg.seed) if "user_tastes" in tables else None
    shown = cfg.data.impressions_per_query
    out["cascade"] = {}
    for d in (d for d in PRERANK_DEPTHS if d <= R):
        ids = cascade.with_sizes(prerank_k=d).rank_embeddings(emb, users, max(10, shown))[0].item_ids
        row = {"val_ndcg@10": round(float(ndcg_at_k(ids, target[:, None], 10).mean()), 4)}
        if sim is not None:
            row["val_orders_per_1k"] = round(1e3 * sim.score(users, target, ids[:, :shown])["orders_per_query"], 1)
        out["cascade"][f"prerank_k={d}"] = row
    return out


def validation_check(cfg: Config, root: Path, cascade: MCACascade, k: int = 10) -> dict[str, float]:
    """HR@k and simulated orders per 1k on the VAL split: the cascade, without its ranker, and recall order alone."""
    # lazy: torch only where this step needs it; importing the module (for MCA_DIR or the data helpers) does not load it
    from onevision.encoder.api import decode_image_column

    queries, _, _ = load_split_logs(root, "val")
    if queries.empty:
        return {}
    emb = cascade.embed(decode_image_column(queries, cfg.data.import_dir, cfg.data.image_channels))
    users, target = queries["user_id"].to_numpy(np.int64), queries["item_id"].to_numpy(np.int64)
    shown = max(k, cfg.data.impressions_per_query)
    lists = {
        "mca": cascade.rank_embeddings(emb, users, shown)[0].item_ids,
        **{c.name: c.rank_embeddings(emb, users, shown)[0].item_ids for c in cascade.ablations()},
        "no_ranker": cascade.without_ranker().rank_embeddings(emb, users, shown)[0].item_ids,
        "recall": cascade.index.search(emb, shown)[0],
    }
    out = {f"val_hr@{k}_{name}": float(hit_rate_at_k(ids, target[:, None], k).mean()) for name, ids in lists.items()}
    out |= {f"val_ndcg@{k}_{name}": float(ndcg_at_k(ids, target[:, None], k).mean()) for name, ids in lists.items()}
    tables = read_tables(root / paths.VALIDATED, ("items", "user_tastes"))
    if "user_tastes" in tables:
        sim = UserSimulator.from_tables(tables["items"], tables["user_tastes"], seed=cfg.seed)
        for name, ids in lists.items():
            out[f"val_orders_per_1k_{name}"] = 1e3 * sim.score(users, target, ids[:, : cfg.data.impressions_per_query])["orders_per_query"]
    return out
