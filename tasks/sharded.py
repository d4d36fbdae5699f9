"""Prefect tasks of the sharded evaluation: one row range each, thin wrappers over onevision.comparison.shards."""

from __future__ import annotations

import numpy as np
from prefect import task

from onevision.comparison import shards


@task(name="embed-views")
def embed_shard(root: str, start: int, stop: int, threads: int) -> np.ndarray:
    """Embed catalog views ``start:stop`` with the saved encoder."""
    return shards.embed_views(root, start, stop, threads)


@task(name="rank-queries")
def rank_shard(root: str, system: str, start: int, stop: int, threads: int) -> np.ndarray:
    """``system``'s ranked lists for TEST queries ``start:stop``."""
    return shards.rank_queries(root, system, start, stop, threads)
