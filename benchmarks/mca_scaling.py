"""How the MCA cascade's stages scale with the catalog (10k -> 1M items).

Synthetic but shaped like the demo: L2-normalised embeddings clustered by
category, items with categories / brands / prices, a synthetic impression log
for the user and item statistics, a pre-ranker and a ranker of the configured
size (a LambdaMART booster, MCA's ranker). Queries are noisy copies of catalog items. The encoder is left out (its
cost does not depend on the catalog): timings start at the query embedding.

For each catalog size and index type it reports the index build time and
memory, per-stage milliseconds per query in batches, batch-1 latency
percentiles after warm-up, throughput, and the recall of the ANN index against
exact search (share of the exact top-``recall_k`` it returns).

    .venv/bin/python benchmarks/mca_scaling.py                       # 10k, 100k, 1M
    .venv/bin/python benchmarks/mca_scaling.py --sizes 10000,50000 --index-types Flat,HNSW32
    .venv/bin/python benchmarks/mca_scaling.py --quick               # CI: 2k items, seconds

Writes benchmarks/results/mca_scaling.md and .json (``--quick``: mca_scaling_quick.*).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from onevision.config import MCAConfig
from onevision.evaluation.cost import limit_threads, peak_memory, rss_mb
from onevision.evaluation.metrics import latency_summary
from onevision.markdown import table as markdown_table
from onevision.mca.cascade import CascadeSizes, LinearScorer, MCACascade
from onevision.mca.features import Catalog, LogStats
from onevision.mca.index import ItemIndex

RESULTS = Path(__file__).parent / "results"
N_CATEGORIES, N_BRANDS, N_USERS = 10, 40, 2000


def synthetic_embeddings(n: int, dim: int, category: np.ndarray, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) float32 unit vectors: category centroid + item noise (built in chunks: no float64 copy of 1M x D)."""
    centroids = rng.standard_normal((N_CATEGORIES, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        x = 0.6 * centroids[category[start:stop]] + rng.standard_normal((stop - start, dim), dtype=np.float32) / math.sqrt(dim)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_cascade(n: int, dim: int, cfg: MCAConfig, ranker_iters: int, seed: int) -> tuple[Catalog, LogStats, np.ndarray, LinearScorer, object]:
    rng = np.random.default_rng(seed)
    category = rng.integers(0, N_CATEGORIES, n)
    catalog = Catalog(
        item_ids=np.arange(n, dtype=np.int64) * 7 + 3,  # ids are not rows
        category=category.astype(np.int64),
        brand=rng.integers(0, N_BRANDS, n).astype(np.int64),
        lpr=(0.3 * rng.standard_normal(n)).astype(np.float32),
        brand_names=np.array([f"brand{b:02d}" for b in range(N_BRANDS)]),
    )
    emb = synthetic_embeddings(n, dim, category, rng)
    n_log = 200_000
    log = pd.DataFrame({
        "query_id": np.repeat(np.arange(n_log // 20), 20),
        "user_id": np.repeat(rng.integers(0, N_USERS, n_log // 20), 20),
        "item_row": rng.integers(0, n, n_log),
        "position": np.tile(np.arange(20), n_log // 20),
        "click": (rng.random(n_log) < 0.05).astype(float),
    })
    log["order"] = log["click"] * (rng.random(n_log) < 0.3)
    stats = LogStats(log, catalog)
    names = tuple(cfg.prerank_features)
    prerank = LinearScorer(names, np.zeros(len(names), np.float32), np.ones(len(names), np.float32),
                           rng.standard_normal(len(names)).astype(np.float32), 0.0)
    import lightgbm

    from onevision.mca.ltr import LambdaMARTRanker

    features = tuple(cfg.ltr_features)  # the LambdaMART ranker's (MCA's ranker since 2026-12-07)
    x = rng.standard_normal((30_000, len(features))).astype(np.float32)
    grade = np.digitize(x[:, 0] + x[:, 3] * x[:, 7] + 0.5 * rng.standard_normal(len(x)), [1.0, 1.8, 2.5])
    data = lightgbm.Dataset(x, label=grade, group=np.full(len(x) // 50, 50))
    booster = lightgbm.train({"objective": "lambdarank", "num_leaves": max(cfg.ltr_num_leaves), "min_data_in_leaf": cfg.ltr_min_data_in_leaf,
                              "num_threads": 1, "seed": seed, "verbosity": -1}, data, num_boost_round=ranker_iters)
    ranker = LambdaMARTRanker(booster, features, ranker_iters)
    return catalog, stats, emb, prerank, ranker


def queries_near(emb: np.ndarray, n_queries: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.integers(0, len(emb), n_queries)
    q = emb[rows] + 0.5 * rng.standard_normal((n_queries, emb.shape[1]), dtype=np.float32) / math.sqrt(emb.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def index_spec(index_type: str, n: int) -> str:
    """`IVF` in this benchmark means sqrt(N) lists (4*sqrt(N) would make k-means dominate a 2-core run)."""
    return f"IVF{max(1, int(math.sqrt(n)))},Flat" if index_type.upper() == "IVF" else index_type


def bench_index(n: int, index_type: str, parts, queries: np.ndarray, users: np.ndarray, exact_ids: np.ndarray | None,
                args, cfg: MCAConfig) -> tuple[list[dict], np.ndarray]:
    """Build one index type and time the cascade on it (IVF: once per nprobe; HNSW: once per efSearch, which faiss
    raises to the recall size k when smaller).

    Returns the rows and the last recall sets (the exact ground truth when index_type is Flat).
    """
    catalog, stats, emb, prerank, ranker = parts
    spec = index_spec(index_type, n)
    t = time.perf_counter()
    index, mem = peak_memory(lambda: ItemIndex.build(emb, catalog.item_ids, index_type=spec, ef_search=cfg.ef_search, use_gpu="auto"))
    build = {"n_items": n, "index": spec, "index_class": index.description, "build_s": time.perf_counter() - t,
             "index_mb": mem["peak_rss_delta_mb"]}
    sizes = CascadeSizes(recall_k=cfg.recall_k, prerank_k=cfg.prerank_k, neighbours=cfg.neighbours)
    rows, found = [], None
    ivf, hnsw = spec.upper().startswith("IVF"), spec.upper().startswith("HNSW")
    settings = [(p, None) for p in args.nprobe] if ivf else ([(None, e) for e in args.ef_search] if hnsw and args.ef_search else [(None, None)])
    for nprobe, ef_search in settings:
        if nprobe is not None or ef_search is not None:
            index.set_search_params(nprobe=nprobe, ef_search=ef_search)
        cascade = MCACascade(encoder=None, index=index, catalog=catalog, stats=stats, prerank=prerank, ranker=ranker,
                             ranker_features=ranker.names, sizes=sizes)
        row, found = time_cascade(cascade, queries, users, exact_ids, args)
        rows.append({**build, "nprobe": nprobe, "ef_search": ef_search if hnsw else None, **row})
    del index
    gc.collect()
    return rows, found


def time_cascade(cascade: MCACascade, queries: np.ndarray, users: np.ndarray, exact_ids: np.ndarray | None, args
                 ) -> tuple[dict, np.ndarray]:
    """Batched per-stage cost, ANN recall of the recall set, batch-1 latency."""
    k = 50
    stage_s: dict[str, float] = {}
    t = time.perf_counter()
    recalled = []
    for start in range(0, len(queries), args.batch_size):
        batch = slice(start, start + args.batch_size)
        timings: dict[str, float] = {}
        _, stages = cascade.rank_embeddings(queries[batch], users[batch], k, timings)
        recalled.append(stages["recall"])
        for s, v in timings.items():
            stage_s[s] = stage_s.get(s, 0.0) + v
    total = time.perf_counter() - t
    # ANN recall vs exact top-recall_k (the recall set is re-ordered by the pre-ranker: compare as sets)
    found = np.concatenate(recalled)  # (Q, R) item ids
    truth = found if exact_ids is None else exact_ids
    ann_recall = float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, truth, strict=True)]))
    for i in range(args.warmup):
        cascade.rank_embeddings(queries[i : i + 1], users[i : i + 1], k)
    lat, per_stage = [], {}
    for i in range(args.latency_queries):
        j = (args.warmup + i) % len(queries)
        timings = {}
        t = time.perf_counter()
        cascade.rank_embeddings(queries[j : j + 1], users[j : j + 1], k, timings)
        lat.append(time.perf_counter() - t)
        for s, v in timings.items():
            per_stage.setdefault(s, []).append(v)
    row = {
        "ann_recall": ann_recall,
        "qps": len(queries) / total,
        **{f"batch_{s}_ms": 1e3 * v / len(queries) for s, v in stage_s.items()},
        **{f"b1_{key}": value for key, value in latency_summary(np.array(lat)).items()},
        **{f"b1_{s}_p50_ms": 1e3 * float(np.median(v)) for s, v in per_stage.items()},
    }
    return row, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Comma-separated catalog sizes.")
    parser.add_argument("--index-types", default="Flat,IVF", help="Comma-separated faiss index types (IVF = sqrt(N) lists; HNSW32 builds slowly at 1M).")
    parser.add_argument("--dim", type=int, default=128, help="Embedding size (the encoder's default).")
    parser.add_argument("--queries", type=int, default=512, help="Queries timed in batches.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--latency-queries", type=int, default=50, help="Timed batch-1 calls.")
    parser.add_argument("--nprobe", default="16,64", help="Comma-separated IVF lists visited per query (one row each).")
    parser.add_argument("--ef-search", default="", help="Comma-separated HNSW efSearch values (one row each; empty: mca.ef_search; "
                        "faiss searches with max(efSearch, recall k)).")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--recall-k", type=int, default=500)
    parser.add_argument("--prerank-k", type=int, default=100)
    parser.add_argument("--ranker-iters", type=int, default=300, help="Trees in the LambdaMART ranker (mca.ltr_max_rounds is the ceiling early stopping picks under).")
    parser.add_argument("--threads", type=int, default=1, help="torch/faiss/OpenMP threads (1: one serving replica per core, as evaluate.threads); 0: library defaults.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Output stem (default: benchmarks/results/mca_scaling[_quick]).")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 2k items, Flat and IVF, 64 queries, 10 batch-1 calls, 50 trees.")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.batch_size, args.latency_queries, args.warmup = "2000", 64, 64, 10, 2
        args.nprobe, args.recall_k, args.prerank_k, args.ranker_iters = "16", 200, 50, 50
    if args.out is None:
        args.out = RESULTS / ("mca_scaling_quick" if args.quick else "mca_scaling")
    args.nprobe = [int(p) for p in args.nprobe.split(",")]
    args.ef_search = [int(e) for e in args.ef_search.split(",") if e.strip()]
    with limit_threads(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> int:
    cfg = MCAConfig(recall_k=args.recall_k, prerank_k=args.prerank_k)
    sizes = [int(s) for s in args.sizes.split(",")]
    index_types = [s.strip() for s in args.index_types.split(",")]
    rows = []
    t_all = time.perf_counter()
    for n in sizes:
        t = time.perf_counter()
        rss0 = rss_mb()
        parts = synthetic_cascade(n, args.dim, cfg, args.ranker_iters, args.seed)
        rng = np.random.default_rng(args.seed + 1)
        queries = queries_near(parts[2], args.queries, rng)
        users = rng.integers(0, N_USERS, args.queries).astype(np.int64)
        print(f"n={n:,}: synthetic catalog in {time.perf_counter() - t:.1f} s (RSS +{rss_mb() - rss0:.0f} MB)", flush=True)
        order = sorted(index_types, key=lambda i: i.upper() != "FLAT")  # Flat first: its recall sets are the exact truth
        exact_ids = None
        if order[0].upper() != "FLAT":
            exact = faiss.IndexFlatIP(args.dim)
            exact.add(parts[2])
            exact_ids = parts[0].item_ids[exact.search(queries, cfg.recall_k)[1]]
            del exact
        for index_type in order:
            new_rows, found = bench_index(n, index_type, parts, queries, users, exact_ids, args, cfg)
            if index_type.upper() == "FLAT":
                exact_ids = found
            rows += new_rows
            for row in new_rows:
                print(f"  {row['index']:<14} nprobe {row['nprobe'] or '-':<4} ef {row['ef_search'] or '-':<5} build {row['build_s']:6.1f} s  recall {row['batch_recall_ms']:.3f} ms/q  "
                      f"prerank {row['batch_prerank_ms']:.3f}  rank {row['batch_rank_ms']:.3f}  b1 p50 {row['b1_p50_ms']:.2f} ms  "
                      f"ANN recall {row['ann_recall']:.3f}  QPS {row['qps']:.0f}", flush=True)
        del parts, queries
        gc.collect()
    meta = {
        "threads": args.threads or "library defaults",
        "sizes": sizes, "index_types": index_types, "dim": args.dim, "queries": args.queries, "batch_size": args.batch_size,
        "recall_k": cfg.recall_k, "prerank_k": cfg.prerank_k, "nprobe": args.nprobe, "ef_search": args.ef_search, "ranker_iters": args.ranker_iters,
        "faiss": faiss.__version__, "gpus": faiss.get_num_gpus(), "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "total_s": time.perf_counter() - t_all,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    print(f"wrote {args.out.with_suffix('.md')} ({meta['total_s']:.0f} s)")
    return 0


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# MCA cascade scaling with catalog size",
        "",
        f"Synthetic clustered catalog, {meta['dim']}-d embeddings; recall_k={meta['recall_k']}, prerank_k={meta['prerank_k']}, "
        f"ranker {meta['ranker_iters']} trees; {meta['queries']} queries in batches of {meta['batch_size']}; "
        f"faiss {meta['faiss']} ({meta['gpus']} GPUs), {meta['machine']}, threads: {meta['threads']}. Encoder excluded (constant in N). "
        f"Produced by `benchmarks/mca_scaling.py` in {meta['total_s']:.0f} s.",
        "",
        markdown_table([{"items": f"{r['n_items']:,}", "index": r["index"], "nprobe": r["nprobe"] or "–", "efSearch": r.get("ef_search") or "–", "build s": f"{r['build_s']:.1f}",
                         "build peak RSS MB": f"{r['index_mb']:.0f}", "ANN recall@R": f"{r['ann_recall']:.3f}",
                         "recall ms/q": f"{r['batch_recall_ms']:.3f}", "prerank ms/q": f"{r['batch_prerank_ms']:.3f}",
                         "rank ms/q": f"{r['batch_rank_ms']:.3f}", "QPS (batched)": f"{r['qps']:.0f}",
                         "b1 p50 ms": f"{r['b1_p50_ms']:.2f}", "b1 p95 ms": f"{r['b1_p95_ms']:.2f}", "b1 p99 ms": f"{r['b1_p99_ms']:.2f}",
                         "b1 recall p50": f"{r['b1_recall_p50_ms']:.2f}", "b1 prerank p50": f"{r['b1_prerank_p50_ms']:.2f}",
                         "b1 rank p50": f"{r['b1_rank_p50_ms']:.2f}"} for r in rows], align="rl" + "r" * 15),
    ]
    lines += [
        "",
        "ANN recall@R: share of the exact top-R (R = recall_k) neighbours the index returns. ms/q columns: batched wall time per "
        "query of each stage; b1: batch-1 calls after warm-up (whole cascade from the query embedding, and its stages at p50).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
