"""Shards of the two embarrassingly parallel jobs: embedding the catalog and ranking the test queries.

The sharded evaluation flow (``flows/sharded.py``, tasks in ``tasks/sharded.py``) submits these to Dask workers
through Prefect's Dask task runner; each call is self-contained (a project
root and a row range), so a worker process needs nothing but the project on
disk. Shard bounds are multiples of the batch size the serial code uses, so
every shard runs exactly the batches the serial pass would and the merged
result is bit-identical to it (same thread count per process).

>>> shard_bounds(10, 3, align=4)
[(0, 4), (4, 8), (8, 10)]
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from onevision import paths
from onevision.comparison.systems import build_systems
from onevision.config import Config
from onevision.encoder.api import ENCODER_DIR, ImageEncoder, decode_image_column, fuse_views
from onevision.evaluation.cost import limit_threads, time_batches
from onevision.evaluation.harness import TestSet, load_test_set, quality_metrics
from onevision.evaluation.metrics import json_safe
from onevision.project import read_config
from onevision.retrieval import Retriever

EMBED_BATCH = 512  # ImageEncoder.embed's default batch: the serial pass's batches


def shard_bounds(n: int, n_shards: int, align: int = 1) -> list[tuple[int, int]]:
    """Split ``range(n)`` into at most ``n_shards`` contiguous [start, stop) ranges whose starts are multiples
    of ``align`` (so each shard runs whole batches of the serial pass); no empty shard."""
    if n_shards < 1 or align < 1:
        raise ValueError(f"n_shards and align must be >= 1, got {n_shards} and {align}")
    batches = -(-n // align)
    per = -(-batches // n_shards) if batches else 0
    return [(b * align, min(n, (b + per) * align)) for b in range(0, batches, per)] if per else []


@functools.lru_cache(maxsize=4)
def config(root: str) -> Config:
    """The config of project ``root`` (an absolute path), read once per process: the flow's and each worker's."""
    return read_config(root)


@functools.lru_cache(maxsize=2)
def _test_set(root: str) -> TestSet:
    return load_test_set(config(root), Path(root))


@functools.lru_cache(maxsize=8)
def _system(root: str, name: str) -> Retriever:
    built = [s for s in build_systems(config(root), Path(root), names=[name]) if s.name == name]
    if not built:
        raise ValueError(f"system {name!r} cannot be built under {root} (unknown, or its stages have not run)")
    return built[0]


@functools.lru_cache(maxsize=2)
def _encoder(root: str) -> ImageEncoder:
    return ImageEncoder.load(Path(root) / ENCODER_DIR)


def _item_ids(root: str) -> np.ndarray:
    items = pd.read_parquet(Path(root) / paths.VALIDATED / "items.parquet", columns=["item_id"])
    return np.sort(items["item_id"].to_numpy(np.int64))


def _views(root: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The validated catalog views of catalog items, in the order stage align_encoder embeds them."""
    views = pd.read_parquet(Path(root) / paths.VALIDATED / "views.parquet", columns=columns)
    views = views.sort_values(["item_id", "view_id"], kind="stable")
    return views[views["item_id"].isin(_item_ids(root))].reset_index(drop=True)


def n_views(root: str | Path) -> int:
    return len(_views(str(Path(root).resolve()), ["item_id", "view_id"]))


def n_test_queries(root: str | Path) -> int:
    return len(_test_set(str(Path(root).resolve())))


def embed_views(root: str | Path, start: int, stop: int, threads: int = 1) -> np.ndarray:
    """float32 (stop - start, dim): the saved encoder's embeddings of catalog views [start, stop)."""
    root = str(Path(root).resolve())
    cfg = config(root)
    frame = _views(root).iloc[start:stop]
    images = decode_image_column(frame, cfg.data.import_dir, cfg.data.image_channels)
    with limit_threads(threads):
        return _encoder(root).embed(images, EMBED_BATCH)


def fuse_item_embeddings(root: str | Path, view_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, fused item embeddings) from every catalog view's embedding, as stage align_encoder fuses them."""
    root = str(Path(root).resolve())
    cfg = config(root)
    item_ids = _item_ids(root)
    row_of = pd.Series(np.arange(len(item_ids)), index=item_ids)
    views = _views(root, ["item_id", "view_id"])
    if len(views) != len(view_embeddings):
        raise ValueError(f"{len(view_embeddings)} view embeddings for {len(views)} catalog views")
    owner = row_of[views["item_id"].to_numpy()].to_numpy(np.int64)
    return item_ids, fuse_views(view_embeddings, owner, len(item_ids), cfg.encoder.fusion)


def rank_queries(root: str | Path, system: str, start: int, stop: int, threads: int = 1) -> np.ndarray:
    """int64 (stop - start, k): ``system``'s ranked item ids for TEST queries [start, stop), in the
    evaluation's batches and at its depth (max of ``evaluate.ks`` and the result page)."""
    root = str(Path(root).resolve())
    cfg = config(root)
    test, retriever = _test_set(root), _system(root, system)
    k = max(max(cfg.evaluate.ks), cfg.evaluate.shown or cfg.data.impressions_per_query)
    with limit_threads(threads):
        result, _ = time_batches(retriever, test.images[start:stop], test.user_ids[start:stop], k, cfg.evaluate.batch_size)
    return result.item_ids


def score_ranked(root: str | Path, ranked: np.ndarray) -> dict:
    """Every quality metric of the merged ranked lists, as the serial evaluation computes them, and the lists'
    fingerprint (``ranked_sha256`` of the int64 (Q, k) array: equal fingerprints, identical rankings)."""

    root = str(Path(root).resolve())
    cfg = config(root)
    shown = cfg.evaluate.shown or cfg.data.impressions_per_query
    metrics, _ = quality_metrics(ranked, _test_set(root), cfg.evaluate, shown, cfg.seed)
    digest = hashlib.sha256(np.ascontiguousarray(ranked, dtype=np.int64).tobytes()).hexdigest()
    return json_safe({"n_queries": len(ranked), "ranked_sha256": digest, **metrics})
