"""The one retrieval interface every system implements (MCA, OneVision, references), and the numpy ranking
helpers they share (:func:`top_k`, :func:`exact_knn`).

Evaluation, serving and the benchmarks only ever call :meth:`Retriever.retrieve`,
so no system is special-cased.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class RetrievalResult:
    """Top-K answers for a batch of queries.

    item_ids: (Q, K) int64, best first; -1 pads a slot when fewer than K items exist.
    scores:   (Q, K) float32, higher is better; -inf where item_ids is -1.
    timings:  optional per-stage seconds for the whole batch (e.g. {"recall": 0.01, "rank": 0.03}).
    """

    item_ids: np.ndarray
    scores: np.ndarray
    timings: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.item_ids.shape != self.scores.shape or self.item_ids.ndim != 2:
            raise ValueError(f"item_ids {self.item_ids.shape} and scores {self.scores.shape} must be equal (Q, K)")


@runtime_checkable
class Retriever(Protocol):
    """Given query images (and users), return the top-K catalog items."""

    name: str

    def retrieve(self, images: np.ndarray, user_ids: np.ndarray, k: int) -> RetrievalResult:
        """images: (Q, H, W) or (Q, H, W, 3) uint8; user_ids: (Q,) int64 (-1: anonymous)."""
        ...


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row, best first: (Q, n) -> (Q, min(k, n)). Ties inside the top k keep
    column order; which of several tied scores at the cut is kept is argpartition's choice."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def exact_knn(query: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product kNN: (Q, D) queries x (N, D) items -> row indices (Q, min(k, N)) best first, and their
    scores. Cosine on L2-normalised embeddings. (The evaluation's ``knn`` reference uses faiss' flat index instead,
    for its GPU path: the same neighbours.)"""
    sims = query @ items.T  # (Q, N)
    rows = top_k(sims, k)
    return rows, np.take_along_axis(sims, rows, axis=1)
