"""Trivial reference systems: the floor and the ceiling-of-recall every model is read against.

* ``random``: k distinct catalog items drawn uniformly (seeded): the floor.
* ``popularity``: the items most clicked and ordered in the TRAIN logs, the
  same list for every query: what "not looking at the photo" achieves.
* ``knn``: exact nearest neighbours of the query embedding among the aligned
  item embeddings (faiss flat inner product): recall with no ranking at all.
"""

from __future__ import annotations

import time

import numpy as np

from onevision.mca.index import ItemIndex
from onevision.retrieval import RetrievalResult


def _pad(ids: np.ndarray, scores: np.ndarray, k: int) -> RetrievalResult:
    if ids.shape[1] < k:
        pad = ((0, 0), (0, k - ids.shape[1]))
        ids, scores = np.pad(ids, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)
    return RetrievalResult(ids.astype(np.int64), scores.astype(np.float32))


class RandomRetriever:
    """Uniformly random distinct items per query; one seeded stream, so a fixed call sequence repeats exactly."""

    def __init__(self, item_ids: np.ndarray, seed: int = 0, name: str = "random"):
        self.item_ids = np.asarray(item_ids, np.int64)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A2D]))
        self.name = name

    def retrieve(self, images: np.ndarray, user_ids: np.ndarray, k: int) -> RetrievalResult:
        n, kk = len(self.item_ids), min(k, len(self.item_ids))
        keys = self.rng.random((len(images), n))  # (Q, N)
        rows = np.argpartition(keys, kk - 1, axis=1)[:, :kk] if kk < n else np.argsort(keys, axis=1)
        ids = self.item_ids[rows]
        scores = np.tile(-np.arange(kk, dtype=np.float32), (len(images), 1))
        return _pad(ids, scores, k)


class PopularityRetriever:
    """The same most-popular list for every query (clicks + order_weight x orders in the train logs)."""

    def __init__(self, item_ids: np.ndarray, popularity: np.ndarray, name: str = "popularity"):
        order = np.lexsort((np.asarray(item_ids), -np.asarray(popularity, np.float64)))  # ties: lower id first
        self.ranked = np.asarray(item_ids, np.int64)[order]
        self.popularity = np.asarray(popularity, np.float32)[order]
        self.name = name

    def retrieve(self, images: np.ndarray, user_ids: np.ndarray, k: int) -> RetrievalResult:
        q = len(images)
        return _pad(np.tile(self.ranked[:k], (q, 1)), np.tile(self.popularity[:k], (q, 1)), k)


class KNNRetriever:
    """Exact kNN on the aligned embeddings: the encoder plus a flat inner-product index."""

    def __init__(self, encoder, item_ids: np.ndarray, item_emb: np.ndarray, name: str = "knn", use_gpu: str = "auto"):
        self.encoder = encoder
        self.index = ItemIndex.build(item_emb, item_ids, index_type="Flat", use_gpu=use_gpu)
        self.name = name

    def retrieve(self, images: np.ndarray, user_ids: np.ndarray, k: int) -> RetrievalResult:
        t = time.perf_counter()
        query = self.encoder.embed(images)  # (Q, D)
        t_encode = time.perf_counter() - t
        t = time.perf_counter()
        ids, scores = self.index.search(query, k)
        result = _pad(ids, scores, k)
        result.timings = {"encode": t_encode, "recall": time.perf_counter() - t}
        return result
