"""The MCA cascade (multi-stage cascading architecture): the incumbent OneVision must beat.

    query image --encoder--> embedding --faiss--> recall_k items
        --pre-ranker (linear, cheap features)--> prerank_k items
        --ranker (LambdaMART, personalised)--> top K

Each stage narrows the candidate set for a more expensive model; what a stage
drops, later stages never see (the "recall loss" the evaluation measures at
each cut). :class:`MCACascade` implements :class:`onevision.retrieval.Retriever`;
``use_ranker=False`` gives the ``mca_no_ranker`` reference (pre-ranker order);
:meth:`MCACascade.ablations` the same cascade with each saved alternative ranker
(``mca_pointwise``: the pointwise classifier MCA ranked with until 2026-12-07).
Items beyond the ranker's short list keep their pre-rank order, so any K works.
A ranker is any object with ``score(features (n, F)) -> (n,)`` (higher first).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from onevision import atomic
from onevision.mca.features import Catalog, LogStats, pair_features
from onevision.mca.index import ItemIndex
from onevision.mca.ltr import LambdaMARTRanker, PointwiseRanker
from onevision.retrieval import RetrievalResult, top_k

log = logging.getLogger(__name__)

MANIFEST = "mca.json"
RANKER_FILE = "ranker.joblib"  # format 1: the pointwise classifier was the ranker
LTR_FILE = "ranker.lgb.txt"
STATS_FILE = "log_stats.npz"
CATALOG_FILE = "catalog.npz"
INDEX_DIR = "index"


@dataclass
class LinearScorer:
    """The pre-ranker: ``x @ weights + bias`` on standardised features (a logistic regression's logit)."""

    names: tuple[str, ...]
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    weights: np.ndarray  # (F,)
    bias: float

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(..., F) -> (...,) logits."""
        return ((features - self.mean) / self.scale) @ self.weights + self.bias

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": float(self.bias)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearScorer:
        arr = lambda key: np.asarray(d[key], np.float32)  # noqa: E731
        return cls(tuple(d["names"]), arr("mean"), arr("scale"), arr("weights"), float(d["bias"]))


@dataclass
class CascadeSizes:
    recall_k: int = 500  # recall cut: what faiss returns
    prerank_k: int = 100  # pre-rank cut: the ranker's short list
    neighbours: int = 10  # nearest items whose categories vote for the query's category


class MCACascade:
    """Recall -> pre-rank -> rank over the aligned encoder's embeddings (a :class:`Retriever`)."""

    def __init__(self, *, encoder, index: ItemIndex, catalog: Catalog, stats: LogStats, prerank: LinearScorer,
                 ranker, ranker_features: tuple[str, ...], sizes: CascadeSizes, use_ranker: bool = True,
                 name: str = "mca", alternatives: dict[str, tuple[Any, tuple[str, ...]]] | None = None):
        self.encoder = encoder
        self.index = index
        self.catalog = catalog
        self.stats = stats
        self.prerank = prerank
        self.ranker = ranker
        self.ranker_features = tuple(ranker_features)
        self.sizes = sizes
        self.use_ranker = use_ranker
        self.name = name
        self.alternatives = dict(alternatives or {})  # ablation name -> (ranker, its features)

    def with_ranker(self, ranker, ranker_features: tuple[str, ...], name: str) -> MCACascade:
        """The same cascade with another ranker (shares recall and pre-ranker)."""
        clone = MCACascade.__new__(MCACascade)
        clone.__dict__.update(self.__dict__)
        clone.ranker, clone.ranker_features, clone.name, clone.use_ranker, clone.alternatives = ranker, tuple(ranker_features), name, True, {}
        return clone

    def ablations(self) -> list[MCACascade]:
        """One cascade per saved alternative ranker (e.g. ``mca_pointwise``), in saved order."""
        return [self.with_ranker(ranker, names, name) for name, (ranker, names) in self.alternatives.items()]

    def without_ranker(self, name: str = "mca_no_ranker") -> MCACascade:
        """The same cascade stopped after pre-ranking (shares every component)."""
        clone = MCACascade.__new__(MCACascade)
        clone.__dict__.update(self.__dict__)
        clone.use_ranker, clone.name = False, name
        return clone

    # ------------------------------------------------------------------ search
    def retrieve(self, images: np.ndarray, user_ids: np.ndarray, k: int) -> RetrievalResult:
        return self.run(images, user_ids, k)[0]

    def stage_candidates(self, images: np.ndarray, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Item ids that survive each cut, (Q, n_stage) each: recall, prerank (and rank = its order of the short list)."""
        return self.run(images, user_ids, self.sizes.prerank_k)[1]

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.encoder.embed(images)  # (Q, D)

    def run(self, images: np.ndarray, user_ids: np.ndarray, k: int) -> tuple[RetrievalResult, dict[str, np.ndarray]]:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        query = self.embed(images)  # (Q, D)
        timings["encode"] = time.perf_counter() - t
        result, stages = self.rank_embeddings(query, np.asarray(user_ids, np.int64), k, timings)
        return result, stages

    def rank_embeddings(self, query: np.ndarray, user_ids: np.ndarray, k: int, timings: dict[str, float] | None = None
                        ) -> tuple[RetrievalResult, dict[str, np.ndarray]]:
        """The cascade from query embeddings (Q, D) on; benchmarks call this to leave the encoder out."""
        timings = {} if timings is None else timings
        s = self.sizes
        t = time.perf_counter()
        rows, sims = self.index.search_rows(query, s.recall_k)  # (Q, R), (Q, R)
        valid = rows >= 0
        top_sim = np.where(valid[:, 0], sims[:, 0], 0.0)  # (Q,)
        neighbour_cats = np.where(valid[:, : s.neighbours], self.catalog.category[np.maximum(rows[:, : s.neighbours], 0)], -1)
        user_rows = self.stats.user_rows(user_ids)  # (Q,)
        timings["recall"] = time.perf_counter() - t

        t = time.perf_counter()
        feats = pair_features(self.stats, user_rows, cand_rows=rows, sims=sims, top_sim=top_sim, neighbour_cats=neighbour_cats, names=self.prerank.names)  # (Q, R, F)
        pre_score = np.where(valid, self.prerank(feats), -np.inf)  # (Q, R)
        pre_order = top_k(pre_score, rows.shape[1])  # (Q, R) full pre-rank order
        rows = np.take_along_axis(rows, pre_order, axis=1)
        sims = np.take_along_axis(sims, pre_order, axis=1)
        pre_score = np.take_along_axis(pre_score, pre_order, axis=1)
        timings["prerank"] = time.perf_counter() - t

        P = min(s.prerank_k, rows.shape[1])
        short_rows, short_sims = rows[:, :P], sims[:, :P]  # (Q, P)
        final_rows, final_scores = rows, pre_score
        if self.use_ranker:
            t = time.perf_counter()
            feats = pair_features(self.stats, user_rows, cand_rows=short_rows, sims=short_sims, top_sim=top_sim, neighbour_cats=neighbour_cats,
                                  names=self.ranker_features, query_emb=query)
            Q = len(short_rows)
            raw = self.ranker.score(feats.reshape(Q * P, -1)).reshape(Q, P)  # (Q, P)
            rank_score = np.where(short_rows >= 0, raw, -np.inf)
            order = top_k(rank_score, P)
            # the ranked short list first, then the rest of the recall set in pre-rank order (scores kept below)
            tail_score = pre_score[:, P:] - 1e4  # below any score of the ranked short list
            final_rows = np.concatenate([np.take_along_axis(short_rows, order, axis=1), rows[:, P:]], axis=1)
            final_scores = np.concatenate([np.take_along_axis(rank_score, order, axis=1), tail_score], axis=1)
            timings["rank"] = time.perf_counter() - t

        ids = np.where(final_rows >= 0, self.catalog.item_ids[np.maximum(final_rows, 0)], -1)[:, :k]
        scores = np.where(ids >= 0, final_scores[:, :k], -np.inf).astype(np.float32)
        if ids.shape[1] < k:
            pad = ((0, 0), (0, k - ids.shape[1]))
            ids, scores = np.pad(ids, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)
        to_ids = lambda r: np.where(r >= 0, self.catalog.item_ids[np.maximum(r, 0)], -1)  # noqa: E731
        stages = {"recall": to_ids(rows), "prerank": to_ids(short_rows)}
        if self.use_ranker:
            stages["rank"] = ids[:, : min(k, P)]
        return RetrievalResult(ids.astype(np.int64), scores, timings), stages

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.index.save(directory / INDEX_DIR)
        for name, arrays in ((CATALOG_FILE, self.catalog.to_arrays()), (STATS_FILE, self.stats.to_arrays())):
            with atomic.atomic_path(directory / name) as tmp:
                np.savez(tmp, **arrays)
        rankers = {}
        for name, (ranker, names) in {self.name: (self.ranker, self.ranker_features), **self.alternatives}.items():
            file = LTR_FILE if name == self.name and ranker.kind == "lambdarank" else f"ranker_{name}.{'lgb.txt' if ranker.kind == 'lambdarank' else 'joblib'}"
            with atomic.atomic_path(directory / file) as tmp:
                if ranker.kind == "lambdarank":
                    ranker.save(Path(tmp))
                else:
                    joblib.dump(ranker.model, tmp)
            rankers[name] = {"kind": ranker.kind, "file": file, "features": list(names)}
        manifest = {
            "format": 2,
            "sizes": vars(self.sizes),
            "prerank": self.prerank.to_dict(),
            "ranker_features": list(self.ranker_features),
            "rankers": rankers,
            "index": self.index.description,
            "extra": extra or {},
        }
        atomic.write_json(directory / MANIFEST, manifest)

    @classmethod
    def load(cls, directory: str | Path, encoder, *, nprobe: int = 16, ef_search: int = 128, use_gpu: str = "auto",
             sizes: CascadeSizes | None = None) -> MCACascade:
        """Load a saved cascade; ``sizes`` overrides the saved stage sizes (e.g. to sweep them at evaluation)."""
        directory = Path(directory)
        if not (directory / MANIFEST).exists():
            raise FileNotFoundError(f"no MCA model in {directory} (expected {MANIFEST}); run stage mca")
        manifest = json.loads((directory / MANIFEST).read_text())
        with np.load(directory / CATALOG_FILE, allow_pickle=False) as arrays:
            catalog = Catalog.from_arrays(dict(arrays))
        with np.load(directory / STATS_FILE, allow_pickle=False) as arrays:
            stats = LogStats.from_arrays(dict(arrays), catalog)
        index = ItemIndex.load(directory / INDEX_DIR, nprobe=nprobe, ef_search=ef_search, use_gpu=use_gpu)
        specs = manifest.get("rankers") or {"mca": {"kind": "pointwise", "file": RANKER_FILE, "features": manifest["ranker_features"]}}
        rankers = {}
        for name, spec in specs.items():
            names = tuple(spec["features"])
            path = directory / spec["file"]
            rankers[name] = (LambdaMARTRanker.load(path, names) if spec["kind"] == "lambdarank" else PointwiseRanker(joblib.load(path), names), names)
        (main, (ranker, names)), *rest = rankers.items()
        return cls(
            encoder=encoder, index=index, catalog=catalog, stats=stats,
            prerank=LinearScorer.from_dict(manifest["prerank"]),
            ranker=ranker, ranker_features=names, name=main,
            sizes=sizes or CascadeSizes(**manifest["sizes"]),
            alternatives=dict(rest),
        )

    def with_sizes(self, **sizes: int) -> MCACascade:
        clone = MCACascade.__new__(MCACascade)
        clone.__dict__.update(self.__dict__)
        clone.sizes = replace(self.sizes, **sizes)
        return clone
