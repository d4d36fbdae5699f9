"""Does OneVision's decode cost stay flat in the catalog size? Geometric beam search vs exact recall, 10k -> 1M items.

Synthetic catalogs (no training): N random unit embeddings (dim 128), three residual levels of 256 codes
each fit by greedy residual assignment to random codebooks, plus the disambiguation level; the leaf head
is untrained (cosine decides) with an item store of N rows. For each N this measures, at batch 1 after
warm-up and at batch 64:

* OneVision: ``geometric_beam_search`` (beam 100, k 10, leaf head over the beam's items), the trie and item
  store memory;
* exact recall (what MCA's first stage does): faiss ``IndexFlatIP`` top-300 over N items.

    python benchmarks/geo_scaling.py                  # 10k, 100k, 1M (~5 min on 2 cores)
    python benchmarks/geo_scaling.py --quick          # 2k, 20k (CI)

Writes ``benchmarks/results/geo_scaling.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from onevision.generative.checkpoint import build_generator
from onevision.generative.geosearch import geometric_beam_search
from onevision.generative.model import Context, GeneratorConfig
from onevision.generative.nodes import node_geometry
from onevision.generative.trie import SIDTrie
from onevision.markdown import table as markdown_table
from onevision.vrq.quantizer import disambiguate

RESULTS = Path(__file__).resolve().parent / "results"
DIM, CODES, BEAM, K, RECALL_K = 128, 256, 100, 10, 300
LEVELS = 3
# The synthetic tokenizer is RQ-KMeans (as VRQ starts): codebooks fit to each level's residuals, so codes
# are used evenly and a 3-level prefix stands for ~1 item at every size (1.001 at 10k, 1.06 at 1M items).
# Random, unfitted codebooks (this benchmark's first version) left 2.9 items per prefix at 1M, so the
# beam's prefixes held ever more items and the leaf head's work grew with the catalog.
KMEANS_SAMPLE, KMEANS_ITERS = 65536, 10
TARGET = 1.3  # issue 12: p50 at 1M items <= 1.3x p50 at 10k


def synthetic(n: int, seed: int = 0, levels: int = LEVELS):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    books, codes, r = [], [], emb.copy()
    for level in range(levels):
        # RQ-KMeans, as the VRQ tokenizer starts: k-means on (a sample of) the level's residuals
        sample = r[rng.choice(n, min(n, KMEANS_SAMPLE), replace=False)]
        km = faiss.Kmeans(DIM, CODES, niter=KMEANS_ITERS, seed=seed + level, verbose=False)
        km.train(np.ascontiguousarray(sample))
        book = km.centroids.astype(np.float32)
        c = np.empty(n, np.int64)
        for s in range(0, n, 65536):
            x = r[s : s + 65536]
            c[s : s + 65536] = (x @ book.T * 2 - (book * book).sum(1)).argmax(1)
        books.append(book)
        codes.append(c)
        r = r - book[c]
    codes = np.stack(codes, 1)
    items = np.arange(n, dtype=np.int64)
    sids = np.concatenate([codes, disambiguate(codes, items)[:, None]], 1)
    return emb, books, items, sids


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(n: int, reps: int, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    emb, books, items, sids = synthetic(n, seed)
    levels = sids.shape[1] - 1
    trie = SIDTrie(sids, items, (CODES,) * levels + (int(sids[:, -1].max()) + 1,))
    cfg = GeneratorConfig(codebook_sizes=trie.codebook_sizes, token_dim=4, n_visual_tokens=4, embed_dim=DIM, d_model=16, n_heads=2,
                          n_enc_layers=1, n_dec_layers=1, geo_levels=levels, geo_dim=DIM, leaf_items=n, leaf_categories=10, leaf_brands=10,
                          node_geometry=True)  # the shipped decoding: prefixes scored by their items' centroids
    model = build_generator(cfg).eval()
    model.set_codebooks(books)
    model.learned_weight.fill_(0.0)
    table = pd.DataFrame({"item_id": items, "category": items % 10, "brand": (items // 10 % 10).astype(str), "price": 1.0 + items % 7})
    model.leaf.fill(table, items, emb)
    nodes = node_geometry(model, trie)  # built once per catalog, as a loaded model does on its first query
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    queries = emb[rng.integers(n, size=reps + 64)] + 0.3 / np.sqrt(DIM) * rng.normal(size=(reps + 64, DIM)).astype(np.float32)

    def ctx(rows: np.ndarray) -> Context:
        B = len(rows)
        return Context(visual=torch.zeros(B, 4, 4), image=torch.from_numpy(queries[rows]), user=torch.zeros(B, dtype=torch.long))

    one = []
    hits = 0
    for i in range(reps + 10):
        c = ctx(np.array([i]))
        t = time.perf_counter()
        geometric_beam_search(model, c, trie=trie, beam_width=BEAM, k=K)
        if i >= 10:
            one.append(1000 * (time.perf_counter() - t))
    t = time.perf_counter()
    geometric_beam_search(model, ctx(np.arange(reps, reps + 64)), trie=trie, beam_width=BEAM, k=K)
    batched = 1000 * (time.perf_counter() - t) / 64
    # recall of the item each query was drawn near: exact kNN top-1 is the reference
    index = faiss.IndexFlatIP(DIM)
    index.add(emb)
    flat = []
    for i in range(reps + 10):
        t = time.perf_counter()
        _, nn = index.search(queries[i : i + 1], RECALL_K)
        if i >= 10:
            flat.append(1000 * (time.perf_counter() - t))
        if i < reps:
            exact = nn[0, 0]
            c = ctx(np.array([i]))
            hits += int(exact in geometric_beam_search(model, c, trie=trie, beam_width=BEAM, k=K).item_ids[0].tolist()) if i < 50 else 0
    t = time.perf_counter()
    index.search(queries[reps : reps + 64], RECALL_K)
    flat_batched = 1000 * (time.perf_counter() - t) / 64
    store = sum(b.numel() * b.element_size() for b in model.leaf.buffers())
    return {
        "items": n, "levels": int(trie.n_levels - 1), "build_s": round(build_s, 1),
        "onevision_b1_p50_ms": round(p(one, 50), 3), "onevision_b1_p95_ms": round(p(one, 95), 3), "onevision_b64_ms_per_query": round(batched, 3),
        "exact_recall_b1_p50_ms": round(p(flat, 50), 3), "exact_recall_b64_ms_per_query": round(flat_batched, 3),
        "onevision_finds_exact_nn_at_10": round(hits / min(50, reps), 3),
        "trie_mb": round(trie.memory_bytes() / 2**20, 1), "item_store_mb": round(store / 2**20, 1),
        "codebooks_mb": round(model.codebooks.numel() * 4 / 2**20, 2), "node_table_mb": round(nodes.memory_bytes() / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2k and 20k items (CI)")
    ap.add_argument("--sizes", type=int, nargs="*", help="catalog sizes (default 10k 100k 1M)")
    ap.add_argument("--reps", type=int, default=200, help="batch-1 queries per size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sizes = args.sizes or ([2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000])
    reps = 30 if args.quick else args.reps
    rows = []
    for n in sizes:
        rows.append(measure(n, reps))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for r in rows:
        r["onevision_p50_vs_smallest"] = round(r["onevision_b1_p50_ms"] / base["onevision_b1_p50_ms"], 3)
        r["exact_recall_p50_vs_smallest"] = round(r["exact_recall_b1_p50_ms"] / base["exact_recall_b1_p50_ms"], 3)
        r["exact_recall_over_onevision_b1"] = round(r["exact_recall_b1_p50_ms"] / r["onevision_b1_p50_ms"], 3)
    out = args.out / ("geo_scaling_quick" if args.quick else "geo_scaling")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "threads": args.threads, "machine": platform.platform(), "beam": BEAM, "k": K}, indent=2) + "\n")
    cols = ["items", "onevision_b1_p50_ms", "onevision_b1_p95_ms", "onevision_b64_ms_per_query", "onevision_p50_vs_smallest",
            "exact_recall_b1_p50_ms", "exact_recall_b64_ms_per_query", "exact_recall_p50_vs_smallest", "exact_recall_over_onevision_b1",
            "onevision_finds_exact_nn_at_10", "trie_mb", "item_store_mb", "node_table_mb"]
    lines = ["# OneVision decode cost vs catalog size", "",
             f"`python benchmarks/geo_scaling.py{' --quick' if args.quick else ''}` ({args.threads} thread(s), {platform.processor() or platform.machine()}). "
             f"Synthetic catalogs, {LEVELS} residual levels x {CODES} codes fit by RQ-KMeans ({KMEANS_ITERS} iterations on <= {KMEANS_SAMPLE} residuals per level) + disambiguation, beam {BEAM}, k {K}; exact recall = faiss IndexFlatIP top-{RECALL_K}.", "",
             markdown_table([{c: r[c] for c in cols} for r in rows], align="r" * len(cols))]
    top = rows[-1]
    verdict = "met" if top["onevision_p50_vs_smallest"] <= TARGET else "**missed**"
    lines += ["", f"Target (issue 12): OneVision's batch-1 p50 at {top['items']:,} items at most {TARGET}x its p50 at "
              f"{base['items']:,}: {verdict} ({top['onevision_p50_vs_smallest']}x), while exact recall grows "
              f"{top['exact_recall_p50_vs_smallest']}x. Per query the decoder's work is levels x beam x codes plus the leaf head "
              "over the beam's items; only the memory it gathers from (trie, item store) grows with the catalog.", "",
              "History: the first version of this benchmark drew random, unfitted codebooks; they used codes so unevenly "
              "that a 3-level prefix held 2.9 items on average at 1M (1.07 at 10k), the leaf head scored 516 candidates "
              "per query instead of 124, and the ratio came out 1.6-1.8x. A fitted tokenizer (what VRQ trains) keeps "
              "about one item per prefix at every size."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
