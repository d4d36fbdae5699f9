"""MCA's ranking stage as learning to rank: LambdaMART (LightGBM ``lambdarank``) on query groups.

Production cascades rank with a listwise model trained per query, not with a
click classifier: the loss (LambdaRank's NDCG-weighted pairwise gradients) only
compares items of the same query, so it learns what orders a short list rather
than what predicts a click anywhere.

* **Groups**: one per TRAIN query: the pre-ranker's top candidates (what the
  ranker ranks at serving) together with the logged impressions of that query.
* **Graded relevance**: ordered 2 > clicked 1 > shown or never shown 0; the
  photographed product (the query log says which) gets ``mca.ltr_exact_grade``.
  NDCG gains per grade: ``mca.ltr_label_gain``.
* **Position debiasing**: clicks were collected under a logging policy that
  showed items at positions 0..S-1, and a shopper examines lower slots less.
  LightGBM 4.1+ models that bias inside lambdarank (Unbiased LambdaMART: a
  learned examination factor per position divides the pairwise gradients) when
  the Dataset has a ``position`` column. Shown items carry their logged slot;
  candidates the policy never showed share one extra slot ``S`` (never
  examined, so their missing click is weak evidence).
* **Tuning**: a seeded sample of ``mca.ltr_trials`` points of the grid
  (num_leaves x learning_rate x feature_fraction), each early-stopped on VAL
  NDCG@10 (VAL groups built the same way, with TRAIN statistics); the best
  trial on VAL is the ranker. Every trial is recorded in metrics/mca.json.

:class:`PointwiseRanker` wraps the pre-2026-12 scikit-learn classifier, kept as
the ablation ``mca_pointwise``; both expose ``score(features) -> (n,)``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

# +1: a feature the ranker may only reward (more similar ranks higher); -1: only penalise.
MONOTONE = {"sim": 1, "sim_gap": -1, "cat_vote": 1, "view_sim": 1, "view_gap": -1}
NDCG_AT = 10


def graded_relevance(exact: np.ndarray, clicked: np.ndarray, ordered: np.ndarray, exact_grade: int = 2) -> np.ndarray:
    """Grades 0..3: ordered 2 > clicked 1 > shown 0; the photographed product at least ``exact_grade``."""
    grade = np.where(np.asarray(ordered) > 0, 2, np.where(np.asarray(clicked) > 0, 1, 0))
    return np.maximum(grade, np.where(np.asarray(exact) > 0, exact_grade, 0)).astype(np.int32)


def group_sizes(query_ids: np.ndarray) -> np.ndarray:
    """Sizes of the runs of equal query ids (rows of one query must be contiguous) -> (G,) int."""
    q = np.asarray(query_ids)
    if len(q) == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    if len(np.unique(q[starts])) != len(starts):
        raise ValueError("rows of a query must be contiguous (sort by query first)")
    return np.diff(np.r_[starts, len(q)])


def position_propensity(position: np.ndarray, clicked: np.ndarray, n_slots: int) -> np.ndarray:
    """Inverse-propensity weights from the log (the fallback when LightGBM cannot model positions):
    examination of slot k estimated as CTR(k) / CTR(0) (a position-based model with the policy's mix of items);
    returns 1 / that per row, unshown slots (>= n_slots) get weight 1."""
    position, clicked = np.asarray(position, np.int64), np.asarray(clicked, np.float64)
    shown = position < n_slots
    ctr = np.bincount(position[shown], weights=clicked[shown], minlength=n_slots) / np.maximum(np.bincount(position[shown], minlength=n_slots), 1)
    exam = np.clip(ctr / max(ctr[0], 1e-12), 0.05, 1.0)
    return np.where(shown, 1.0 / exam[np.minimum(position, n_slots - 1)], 1.0)


@dataclass
class RankingSet:
    """Rows of query groups (contiguous per query): features, grades, logged position (S = never shown)."""

    x: np.ndarray  # (n, F) float32
    label: np.ndarray  # (n,) int grades
    query_ids: np.ndarray  # (n,)
    position: np.ndarray  # (n,) int

    @property
    def groups(self) -> np.ndarray:
        return group_sizes(self.query_ids)


class LambdaMARTRanker:
    """A trained LightGBM lambdarank booster over named features (higher score ranks first)."""

    kind = "lambdarank"

    def __init__(self, booster, names: tuple[str, ...], best_iteration: int):
        self.booster = booster
        self.names = tuple(names)
        self.best_iteration = int(best_iteration)

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.booster.predict(np.asarray(x, np.float32), num_iteration=self.best_iteration or None, num_threads=1)

    def save(self, path: Path) -> None:
        path.write_text(self.booster.model_to_string(num_iteration=self.best_iteration or None))

    @classmethod
    def load(cls, path: Path, names: tuple[str, ...]) -> LambdaMARTRanker:
        booster = lightgbm.Booster(model_file=str(path))
        return cls(booster, names, booster.current_iteration())

    def feature_importance(self) -> dict[str, float]:
        gain = self.booster.feature_importance("gain", iteration=self.best_iteration or None)
        total = max(float(gain.sum()), 1e-12)
        return {n: round(float(g) / total, 4) for n, g in zip(self.names, gain, strict=True)}


class PointwiseRanker:
    """The pointwise classifier (scikit-learn ``HistGradientBoostingClassifier``): score = log P(relevant)."""

    kind = "pointwise"

    def __init__(self, model, names: tuple[str, ...]):
        self.model = model
        self.names = tuple(names)

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self.model.predict_proba(x)[:, 1], 1e-12))


def search_grid(cfg) -> list[dict[str, float]]:
    """Every point of the grid (num_leaves x learning_rate x feature_fraction), in a fixed order."""
    return [{"num_leaves": int(a), "learning_rate": float(b), "feature_fraction": float(c)}
            for a, b, c in itertools.product(cfg.ltr_num_leaves, cfg.ltr_learning_rate, cfg.ltr_feature_fraction)]


def sample_trials(cfg, seed: int) -> list[dict[str, float]]:
    """A seeded sample of ``cfg.ltr_trials`` grid points (the whole grid when it is that small)."""
    grid = search_grid(cfg)
    if len(grid) <= cfg.ltr_trials:
        return grid
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A3B]))
    return [grid[i] for i in np.sort(rng.choice(len(grid), cfg.ltr_trials, replace=False))]


def fit_lambdarank(train: RankingSet, val: RankingSet | None, *, names: tuple[str, ...], cfg, seed: int, threads: int = 1,
                   n_slots: int = 20) -> tuple[LambdaMARTRanker, dict[str, Any]]:
    """Seeded search over the grid, each trial early-stopped on VAL NDCG@10; returns the best ranker and the record.

    ``cfg``: :class:`~onevision.config.MCAConfig`. Without VAL groups, the first trial runs ``ltr_max_rounds`` rounds.
    """
    debias = "lightgbm_position" if cfg.ltr_position_debias else "off"
    weight = None
    if cfg.ltr_position_debias and "position" not in lightgbm.Dataset.__init__.__code__.co_varnames:  # LightGBM < 4.1
        debias = "ipw"
        weight = position_propensity(train.position, train.label > 0, n_slots)
    dtrain = lightgbm.Dataset(train.x, label=train.label, group=train.groups, feature_name=list(names), weight=weight,
                              position=train.position if debias == "lightgbm_position" else None, free_raw_data=False)
    dval = None
    if val is not None and len(val.x):
        dval = lightgbm.Dataset(val.x, label=val.label, group=val.groups, feature_name=list(names), reference=dtrain, free_raw_data=False)
    base = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [NDCG_AT], "label_gain": list(cfg.ltr_label_gain),
        "lambdarank_truncation_level": 30, "min_data_in_leaf": cfg.ltr_min_data_in_leaf, "lambda_l2": 1.0,
        "monotone_constraints": [MONOTONE.get(n, 0) for n in names], "bagging_fraction": 1.0, "max_bin": 63,
        "num_threads": max(int(threads), 0), "seed": seed, "deterministic": True, "force_row_wise": True, "verbosity": -1,
    }
    trials = sample_trials(cfg, seed) if dval is not None else sample_trials(cfg, seed)[:1]
    record: list[dict[str, Any]] = []
    best: tuple[float, int, Any] | None = None
    for i, point in enumerate(trials):
        t = time.perf_counter()
        params = base | point | {"feature_fraction_seed": seed + i}
        callbacks = [lightgbm.early_stopping(cfg.ltr_early_stopping, first_metric_only=True, verbose=False)] if dval is not None else []
        booster = lightgbm.train(params, dtrain, num_boost_round=cfg.ltr_max_rounds, valid_sets=[dval] if dval is not None else None,
                                 valid_names=["val"] if dval is not None else None, callbacks=callbacks)
        val_ndcg = float(booster.best_score["val"][f"ndcg@{NDCG_AT}"]) if dval is not None else float("nan")
        rounds = booster.best_iteration or booster.current_iteration()
        record.append(point | {"rounds": int(rounds), f"val_ndcg@{NDCG_AT}": round(val_ndcg, 5), "seconds": round(time.perf_counter() - t, 2)})
        if best is None or val_ndcg > best[0]:
            best = (val_ndcg, i, booster)
    assert best is not None
    booster = best[2]
    ranker = LambdaMARTRanker(booster, names, booster.best_iteration or booster.current_iteration())
    return ranker, {
        "position_debias": debias, "label_gain": list(cfg.ltr_label_gain), "exact_grade": cfg.ltr_exact_grade,
        "train_rows": len(train.x), "train_groups": len(train.groups), "val_groups": 0 if val is None else len(val.groups),
        "trials": record, "chosen": record[best[1]], "feature_gain": ranker.feature_importance(),
    }
