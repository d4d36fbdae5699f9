"""Evaluation and embedding extraction sharded over Dask workers (Prefect's official ``prefect-dask``).

The serial `evaluate` stage ranks every TEST query in one process; on a big
catalog or a long query log that is the slowest step after training. This flow
splits the same work into row ranges, runs them as Prefect tasks on a Dask
cluster (a local one of ``workers`` processes by default, or an existing
scheduler given by ``address``), and merges the shards in order:

* catalog views embedded with the saved encoder, fused per item exactly as
  stage ``align_encoder`` fuses them, and checked against
  ``data/embeddings/items.npz`` (``embeddings_max_abs_diff``);
* each system's ranked lists for the TEST queries, then every quality metric
  of the serial evaluation (HR/recall/NDCG/MRR with CIs, clicks, orders).

Shards are whole batches of the serial pass, so with the same threads per
process the merged result is bit-identical to it. Latency and memory are not
measured here (that needs an idle machine, not a busy cluster). Results go to
``reports/evaluate_sharded.json``; ``onevision evaluate-sharded`` and the ``evaluate-sharded``
deployment run it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import numpy as np
from prefect import flow, get_run_logger
from prefect_dask import DaskTaskRunner

from onevision import atomic, paths
from onevision.comparison import shards
from onevision.encoder.api import ITEM_EMBEDDINGS, load_item_embeddings
from tasks.sharded import embed_shard, rank_shard

REPORT = paths.REPORTS / "evaluate_sharded.json"
NO_WORKERS_TIMEOUT = "120s"

# Each shard carries the flow run's context, which refers to this flow. Prefect's loader names this module after the
# file, or "__prefect_loader_<hash>__" when the file is loaded twice in one process; a Dask worker can import neither
# (it died unpickling the shard and the flow waited forever), so objects of this module travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def dask_runner(workers: int = 2, address: str | None = None) -> DaskTaskRunner:
    """A local cluster of ``workers`` single-threaded processes, or the running scheduler at ``address``."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "processes": True, "threads_per_worker": 1,
                                          "dashboard_address": None})


@flow(name="evaluate-sharded", log_prints=True)
def evaluate_sharded(
    root: str = ".",
    *,
    workers: int = 2,
    address: str | None = None,
    systems: list[str] | None = None,
    shards_per_job: int | None = None,
    threads: int = 1,
    embed: bool = True,
    embeddings_out: str | None = None,
    report: str | None = None,
) -> dict[str, Any]:
    """Embed the catalog and rank the TEST queries of ``systems`` (default ``evaluate.systems``) in
    ``shards_per_job`` shards each (default: one per worker); write and return the merged metrics.

    workers: processes of the local Dask cluster; address: a running scheduler (tcp://host:8786) instead.
    threads: torch/BLAS threads per shard (keep shards x threads <= cores).
    embeddings_out: also write the fused item embeddings there (.npz, as data/embeddings/items.npz).
    """
    logger = get_run_logger()
    root_path = Path(root).resolve()
    cfg = shards.config(str(root_path))  # read once in this process, shared with the shard functions run here
    names = list(systems or cfg.evaluate.systems)
    shards_per_job = shards_per_job or workers
    out: dict[str, Any] = {"shards_per_job": shards_per_job, "threads_per_shard": threads, "systems": {}}
    # a shard no worker can take (every local worker died, e.g. killed for memory) fails the run instead of waiting forever
    with dask.config.set({"distributed.scheduler.no-workers-timeout": NO_WORKERS_TIMEOUT}), \
            dask_runner(workers, address) as runner:  # the shards go to Dask; the flow's own steps stay in this process
        if embed:
            bounds = shards.shard_bounds(shards.n_views(root_path), shards_per_job, shards.EMBED_BATCH)
            parts = [runner.submit(embed_shard, {"root": str(root_path), "start": lo, "stop": hi, "threads": threads}) for lo, hi in bounds]
            views = np.concatenate([p.result() for p in parts])
            out["embeddings"] = _merge_embeddings(root_path, views, len(bounds), embeddings_out)
            logger.info("embedded %d views of %d items in %d shards", len(views), out["embeddings"]["items"], len(bounds))
        bounds = shards.shard_bounds(shards.n_test_queries(root_path), shards_per_job, cfg.evaluate.batch_size)
        futures = {name: [runner.submit(rank_shard, {"root": str(root_path), "system": name, "start": lo, "stop": hi, "threads": threads})
                          for lo, hi in bounds] for name in names}
        for name, parts in futures.items():
            ranked = np.concatenate([p.result() for p in parts])
            out["systems"][name] = shards.score_ranked(root_path, ranked)
            logger.info("%s: HR@10 %.4f on %d queries (%d shards)", name, out["systems"][name].get("hr@10", float("nan")),
                        len(ranked), len(bounds))
    atomic.write_text(Path(report) if report else root_path / REPORT, json.dumps(out, indent=2) + "\n")
    return out


def _merge_embeddings(root_path: Path, views: np.ndarray, n_shards: int, embeddings_out: str | None) -> dict[str, Any]:
    """Fuse the embedded views per item (as stage align_encoder does), compare with the saved embeddings, write them."""
    item_ids, items = shards.fuse_item_embeddings(root_path, views)
    facts: dict[str, Any] = {"views": len(views), "items": len(item_ids), "shards": n_shards}
    if (root_path / ITEM_EMBEDDINGS).exists():
        saved_ids, saved = load_item_embeddings(root_path)
        if np.array_equal(saved_ids, item_ids):
            facts["embeddings_max_abs_diff"] = float(np.abs(saved - items).max()) if len(items) else 0.0
    if embeddings_out:
        path = Path(embeddings_out)
        with atomic.atomic_path(path.with_suffix(".npz")) as tmp:
            np.savez(tmp, item_ids=item_ids, embeddings=items)
    return facts
