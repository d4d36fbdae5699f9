"""The recall stage's ANN index: faiss over the aligned catalog item embeddings.

The index type is a faiss ``index_factory`` string (``Flat``, ``IVF256,Flat``,
``IVF1024,PQ16``, ``HNSW32``, ...; ``IVF`` alone picks ``nlist ~ 4*sqrt(N)``).
Embeddings are L2-normalised, so inner product is cosine similarity.

faiss-cpu is the default. With the ``gpu`` extra installed and a GPU visible
(``faiss.get_num_gpus() > 0``) the index is cloned to the GPU for search; HNSW
has no GPU implementation and stays on the CPU. Without a GPU nothing fails:
the CPU index is used. The saved index is always the CPU form, so a model
trained on a GPU box loads anywhere.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import faiss
import numpy as np

from onevision import atomic

log = logging.getLogger(__name__)

INDEX_FILE = "items.faiss"
IDS_FILE = "item_ids.npy"
# k-means wants ~39 points per centroid; fewer gives a warning and poor lists.
_MIN_POINTS_PER_LIST = 39
_MAX_POINTS_PER_LIST = 100
# Batches of >= 20 queries go through BLAS (faiss' historical default). faiss 1.15 raised the cut to
# 128000, leaving exact search of a batch on the per-query SIMD loop, measured 5x slower here
# (256 queries x 100k items x 128-d on one core: 50 ms/query vs 9 ms/query with BLAS).
BLAS_THRESHOLD = 20


def resolve_factory(index_type: str, n_items: int) -> str:
    """Normalise the configured index type for a catalog of ``n_items`` (IVF lists clamped to what the data can train)."""
    spec = index_type.strip()
    if spec.upper() == "IVF":
        spec = f"IVF{max(1, min(int(4 * math.sqrt(n_items)), n_items // _MIN_POINTS_PER_LIST))},Flat"
    match = re.match(r"^IVF(\d+)(.*)$", spec)
    if match:
        nlist = int(match.group(1))
        cap = max(1, n_items // _MIN_POINTS_PER_LIST)
        if nlist > cap:
            log.warning("index %s: %d items train at most %d lists; using IVF%d", spec, n_items, cap, cap)
            nlist = cap
        rest = match.group(2) or ",Flat"
        spec = f"IVF{nlist}{rest}"
    return spec


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # a broken CUDA runtime must not take the CPU path down with it
        return False


class ItemIndex:
    """Top-k inner-product search over catalog items; returns item ids, not rows."""

    def __init__(self, index: faiss.Index, item_ids: np.ndarray, *, nprobe: int = 16, ef_search: int = 128, use_gpu: str = "auto"):
        faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD  # process-wide; see BLAS_THRESHOLD
        self.cpu_index = index
        self.item_ids = np.asarray(item_ids, np.int64)
        self.nprobe = nprobe
        self.ef_search = ef_search
        self._set_search_params(self.cpu_index)
        self.index = self.cpu_index
        self.on_gpu = False
        if use_gpu != "never" and gpu_available() and "HNSW" not in type(index).__name__.upper():
            self._res = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._res, 0, self.cpu_index)
            self.on_gpu = True
            self._set_search_params(self.index)
        elif use_gpu == "always":
            raise RuntimeError("mca.use_gpu=always but faiss sees no GPU (install the `gpu` extra on a GPU machine)")

    @classmethod
    def build(cls, embeddings: np.ndarray, item_ids: np.ndarray, *, index_type: str = "Flat", nprobe: int = 16,
              ef_search: int = 128, use_gpu: str = "auto", seed: int = 0) -> ItemIndex:
        emb = np.ascontiguousarray(embeddings, np.float32)  # (N, D)
        spec = resolve_factory(index_type, len(emb))
        index = faiss.index_factory(emb.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                ivf.cp.seed = seed  # k-means seed: same config, same lists
                # faiss samples 256 points per list; 100 trains lists as well and a 1M catalog 2.5x faster
                ivf.cp.max_points_per_centroid = _MAX_POINTS_PER_LIST
            index.train(emb)
        index.add(emb)
        return cls(index, item_ids, nprobe=nprobe, ef_search=ef_search, use_gpu=use_gpu)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the speed/recall knobs of a built index (IVF nprobe, HNSW efSearch)."""
        self.nprobe = self.nprobe if nprobe is None else nprobe
        self.ef_search = self.ef_search if ef_search is None else ef_search
        self._set_search_params(self.cpu_index)
        if self.index is not self.cpu_index:
            self._set_search_params(self.index)

    def _set_search_params(self, index: faiss.Index) -> None:
        if self.on_gpu_index(index):
            if hasattr(index, "nprobe"):
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", self.nprobe)
            return
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = self.nprobe
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = self.ef_search

    @staticmethod
    def on_gpu_index(index: faiss.Index) -> bool:
        return type(index).__name__.startswith("Gpu")

    @property
    def ntotal(self) -> int:
        return int(self.cpu_index.ntotal)

    @property
    def description(self) -> str:
        return f"{type(faiss.downcast_index(self.cpu_index)).__name__}{' (GPU)' if self.on_gpu else ''}"

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) float32 -> (index rows (Q, k) int64, -1 padding; scores (Q, k) float32, -inf padding)."""
        q = np.ascontiguousarray(queries, np.float32)  # (Q, D)
        scores, rows = self.index.search(q, min(k, self.ntotal))  # (Q, k')
        rows = rows.astype(np.int64)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        if rows.shape[1] < k:  # fewer items than asked for: pad
            pad = ((0, 0), (0, k - rows.shape[1]))
            rows, scores = np.pad(rows, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)
        return rows, scores

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) float32 -> (item ids (Q, k) int64, -1 padding; scores (Q, k) float32, -inf padding)."""
        rows, scores = self.search_rows(queries, k)
        return np.where(rows >= 0, self.item_ids[np.maximum(rows, 0)], -1), scores

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(directory / INDEX_FILE) as tmp:
            faiss.write_index(self.cpu_index, str(tmp))
        with atomic.atomic_path(directory / IDS_FILE) as tmp:
            np.save(tmp, self.item_ids)

    @classmethod
    def load(cls, directory: str | Path, *, nprobe: int = 16, ef_search: int = 128, use_gpu: str = "auto") -> ItemIndex:
        directory = Path(directory)
        index = faiss.read_index(str(directory / INDEX_FILE))
        return cls(index, np.load(directory / IDS_FILE), nprobe=nprobe, ef_search=ef_search, use_gpu=use_gpu)
