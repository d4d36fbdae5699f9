"""The one retrieval interface every system implements (MCA, OneVision, references).

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
