"""Which parts of the catalog the model sends traffic to: the top-1 SID prefix per query.

The semantic ID of an item is a tuple of codes, shallow to deep; its first
``drift.sid_levels`` codes name a region of the catalog. The distribution of
those prefixes over a window is what the SID drift check compares. Where the
prefixes come from, in order of preference:

1. precomputed: both windows carry a ``sid_prefix`` column (e.g. serving logs);
2. a model: any :class:`~onevision.retrieval.Retriever` (the generative model,
   MCA) or a callable ``(images, user_ids) -> (N, L) codes``; its top-1 item is
   looked up in the SID table;
3. no model yet: the exact-kNN top item of the aligned query embedding among
   the item embeddings of ``data/embeddings/items.npz``, looked up in the SID table;
4. otherwise the check is skipped ("skipped: no model").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from onevision.retrieval import Retriever
from onevision.vrq.api import load_sid_table as load_table

log = logging.getLogger(__name__)


def prefix_strings(codes: np.ndarray, levels: int) -> np.ndarray:
    """(N, L) int codes -> (N,) strings of the first ``levels`` codes joined by '-' (e.g. '17' or '17-3')."""
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    head = codes[:, :levels].astype(np.int64)
    return np.array(["-".join(str(c) for c in row) for row in head], dtype=object)


@dataclass
class SidTable:
    """item_id -> SID codes (shallow to deep)."""

    item_ids: np.ndarray  # (N,) int64
    codes: np.ndarray  # (N, L) int64

    @classmethod
    def from_frame(cls, table: pd.DataFrame) -> SidTable:
        """The VRQ stage's table: ``item_id`` and ``code_0 .. code_L`` (shallow to deep, then disambiguation)."""
        code_cols = sorted((c for c in table.columns if str(c).startswith("code_")), key=lambda c: int(str(c)[5:]))
        if "item_id" not in table.columns or not code_cols:
            raise ValueError(f"SID table needs item_id and code_0.. columns, got {list(table.columns)}")
        return cls(table["item_id"].to_numpy(np.int64), table[code_cols].to_numpy(np.int64))

    def prefixes(self, item_ids: np.ndarray, levels: int) -> np.ndarray:
        """SID prefixes of ``item_ids``; None for ids not in the table (an invalid or unknown item)."""
        order = np.argsort(self.item_ids)
        sorted_ids = self.item_ids[order]
        item_ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, item_ids), 0, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[pos] == item_ids) if len(sorted_ids) else np.zeros(len(item_ids), bool)
        out = np.full(len(item_ids), None, dtype=object)
        if found.any():
            out[found] = prefix_strings(self.codes[order[pos[found]]], levels)
        return out


def load_sid_table(root: Path) -> SidTable | None:
    """The VRQ stage's SID table of the project (``onevision.vrq.api``), or None when the stage has not run."""

    try:
        return SidTable.from_frame(load_table(Path(root)))
    except FileNotFoundError:
        return None


class SidAssigner(Protocol):
    name: str

    def assign(self, images: np.ndarray, user_ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """(N,) top-1 SID prefixes (str; None where no valid item came back)."""
        ...


class RetrieverSids:
    """Top-1 item of any retriever (the generative model, MCA), looked up in the SID table."""

    def __init__(self, retriever: Retriever, table: SidTable, levels: int):
        self.retriever, self.table, self.levels = retriever, table, levels
        self.name = f"retriever:{getattr(retriever, 'name', type(retriever).__name__)}"

    def assign(self, images: np.ndarray, user_ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        top = self.retriever.retrieve(images, user_ids, 1).item_ids[:, 0]  # (N,)
        return self.table.prefixes(top, self.levels)


class CallableSids:
    """A function ``(images, user_ids) -> (N, L) SID codes`` (e.g. the generative model's beam search)."""

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], levels: int, name: str = "callable"):
        self.fn, self.levels, self.name = fn, levels, name

    def assign(self, images: np.ndarray, user_ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        return prefix_strings(self.fn(images, user_ids), self.levels)


class KnnSids:
    """No generative model yet: SID of the exact-kNN (cosine) top item of the aligned query embedding."""

    name = "knn-top1:encoder+sid_table (no generative model)"

    def __init__(self, item_ids: np.ndarray, item_embeddings: np.ndarray, table: SidTable, levels: int, chunk: int = 4096):
        norm = np.linalg.norm(item_embeddings, axis=1, keepdims=True)
        self.item_ids = np.asarray(item_ids, np.int64)
        self.item_emb = (item_embeddings / np.maximum(norm, 1e-12)).astype(np.float32)  # (I, D)
        self.table, self.levels, self.chunk = table, levels, chunk

    def assign(self, images: np.ndarray, user_ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        top = np.empty(len(embeddings), dtype=np.int64)
        for start in range(0, len(embeddings), self.chunk):
            q = embeddings[start : start + self.chunk].astype(np.float32)  # (B, D)
            top[start : start + len(q)] = self.item_ids[np.argmax(q @ self.item_emb.T, axis=1)]  # (B, I) -> (B,)
        return self.table.prefixes(top, self.levels)


def default_sid_assigner(root: Path, levels: int, embedder_is_encoder: bool) -> tuple[SidAssigner | None, str]:
    """The kNN fallback when the encoder, its item embeddings and the SID table exist; else (None, why)."""
    if not embedder_is_encoder:
        return None, "skipped: no model (no generative model, and no aligned encoder for the kNN stand-in)"
    table = load_sid_table(root)
    if table is None:
        return None, "skipped: no model (no generative model, and no SID table: run stage vrq)"
    # lazy: torch only for the kNN stand-in of generated SIDs
    from onevision.encoder.api import load_item_embeddings

    try:
        item_ids, item_emb = load_item_embeddings(Path(root))
    except FileNotFoundError:
        return None, "skipped: no model (no item embeddings: run stage align_encoder)"
    return KnnSids(item_ids, item_emb, table, levels), KnnSids.name
