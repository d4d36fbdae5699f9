"""The VRQ tokenizer: residual codebooks that turn an embedding into a semantic ID.

Vision-aligned residual quantization (OneVision, arXiv 2510.05759): L levels of
codebooks C_1..C_L; an embedding x is coded greedily,

    r_1 = x,   k_l = argmin_k ||r_l - C_l[k]||²,   r_{l+1} = r_l - C_l[k_l],

and decoded as x̂ = Σ_l C_l[k_l]. What makes it *vision-aligned* is how the
codebooks are trained (``onevision.vrq.train``): the views of one item are
pulled into their item's shallow codes, so a shopper's photo and the catalog
photos agree on the prefix. The item's semantic ID appends one
disambiguation code (``disambiguate``) so that no two items share an ID.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onevision import atomic

_FILE = "codebooks.npz"
_META = "vrq.json"
_FORMAT = 1


class VRQTokenizer:
    """Greedy residual quantizer over fixed codebooks (numpy; no torch needed to encode)."""

    def __init__(self, codebooks: list[np.ndarray], *, meta: dict | None = None):
        if not codebooks:
            raise ValueError("a VRQ tokenizer needs at least one codebook")
        dims = {c.shape[1] for c in codebooks}
        if len(dims) != 1 or any(c.ndim != 2 for c in codebooks):
            raise ValueError(f"codebooks must be (K_l, D) with one D, got {[c.shape for c in codebooks]}")
        self.codebooks = [np.ascontiguousarray(c, dtype=np.float32) for c in codebooks]
        self.meta = dict(meta or {})

    @property
    def num_levels(self) -> int:
        """Residual levels L (the SID table has L + 1 codes: these plus disambiguation)."""
        return len(self.codebooks)

    @property
    def codebook_sizes(self) -> list[int]:
        return [len(c) for c in self.codebooks]

    @property
    def dim(self) -> int:
        return self.codebooks[0].shape[1]

    def encode(self, emb: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """(N, D) embeddings -> (N, L) int64 codes (before disambiguation)."""
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"expected embeddings (N, {self.dim}), got {emb.shape}")
        codes = np.empty((len(emb), self.num_levels), np.int64)
        for start in range(0, len(emb), batch_size):
            r = emb[start : start + batch_size].copy()  # (B, D) residual
            for level, book in enumerate(self.codebooks):
                k = nearest(r, book)  # (B,)
                codes[start : start + batch_size, level] = k
                r -= book[k]
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, L') codes, L' <= L (a prefix decodes to its partial sum) -> (N, D) reconstruction.

        Extra columns (the disambiguation code of a SID) are ignored.
        """
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2:
            raise ValueError(f"expected codes (N, L), got {codes.shape}")
        out = np.zeros((len(codes), self.dim), np.float32)
        for level in range(min(codes.shape[1], self.num_levels)):
            k = codes[:, level]
            if (k < 0).any() or (k >= len(self.codebooks[level])).any():
                raise ValueError(f"level {level} codes outside 0..{len(self.codebooks[level]) - 1}")
            out += self.codebooks[level][k]
        return out

    def residuals(self, emb: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(N, L, D): the residual each level quantized, given the codes used above it."""
        r = np.asarray(emb, dtype=np.float32).copy()
        out = np.empty((len(r), self.num_levels, self.dim), np.float32)
        for level, book in enumerate(self.codebooks):
            out[:, level] = r
            r = r - book[codes[:, level]]
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(directory / _FILE) as tmp:
            np.savez(tmp, **{f"level_{i}": c for i, c in enumerate(self.codebooks)})
        meta = {"format": _FORMAT, "codebook_sizes": self.codebook_sizes, "dim": self.dim, **self.meta}
        atomic.write_json(directory / _META, meta)

    @classmethod
    def load(cls, directory: str | Path) -> VRQTokenizer:
        directory = Path(directory)
        if not (directory / _FILE).exists():
            raise FileNotFoundError(f"no VRQ tokenizer in {directory} (expected {_FILE}); run stage vrq")
        meta = json.loads((directory / _META).read_text()) if (directory / _META).exists() else {}
        if meta.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"tokenizer in {directory} has format {meta.get('format')}, this code reads {_FORMAT}")
        with np.load(directory / _FILE) as data:
            books = [data[f"level_{i}"] for i in range(len(data.files))]
        for key in ("format", "codebook_sizes", "dim"):
            meta.pop(key, None)
        return cls(books, meta=meta)


def nearest(x: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Index of the nearest codeword (squared L2) for each row of x; ties -> smallest index."""
    # ||x - c||² = ||x||² - 2 x·c + ||c||²; ||x||² is constant per row
    d = (book * book).sum(1)[None, :] - 2.0 * (x @ book.T)  # (N, K)
    return d.argmin(1).astype(np.int64)


def disambiguate(codes: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Final SID level: within each group of items sharing all L codes, 0, 1, 2, ... by item id.

    Every item gets the smallest index not taken in its group, so an item
    alone in its group gets 0 and the full SID (codes + this level) is unique.
    Deterministic: the order inside a group is the item id order.
    """
    codes = np.asarray(codes, dtype=np.int64)
    order = np.lexsort((np.asarray(item_ids), *codes.T[::-1]))  # by codes (level 0 first), then item id
    sorted_codes = codes[order]
    new_group = np.ones(len(order), bool)
    new_group[1:] = (sorted_codes[1:] != sorted_codes[:-1]).any(1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
    last = np.empty(len(order), np.int64)
    last[order] = np.arange(len(order)) - group_start
    return last
