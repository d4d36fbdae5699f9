"""What dynamic pruning buys: the calibrated operating point vs no pruning, same queries, one run.

Trained mode (the one that counts): on a project root after stage
``calibrate_pruning``, the dpo checkpoint decodes the same TEST queries without
pruning and with the chosen config (``models/pruning/pruning.json``, or
``--config`` JSON). Reported, with the calibration stage's own functions:

* quality of both (HR@10, NDCG@10, simulated orders) and the relative loss;
* decoding latency per query at batch 1 (p50 / p95; the two configs' calls are
  interleaved so both see the same machine load) and batched, and the ratios;
* end-to-end batch-1 latency of the retriever (image encoder + decoding), the
  number a serving client sees (onevision.evaluation.cost).

``--synthetic`` needs no trained project: a random SID generator of the
profile's shape over a synthetic VRQ-like catalog (benchmarks/beam_search.py);
it times the same configs and reports the top-k overlap with the unpruned
search instead of quality. A random model's distributions are flat, so margin
pruning prunes little there: it shows the mechanics, not the trade.

    .venv/bin/python benchmarks/pruning.py /path/to/project          # trained project
    .venv/bin/python benchmarks/pruning.py --synthetic --items 2000   # no training needed
    .venv/bin/python benchmarks/pruning.py --quick                    # CI: synthetic, 500 items, seconds

Writes benchmarks/results/pruning.md and .json (``--quick``: pruning_quick.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from onevision.config import load_config
from onevision.evaluation.metrics import json_safe
from onevision.generative.calibrate import (
    DecodeSet,
    decode_k,
    decode_set,
    head_to_head,
    sample_queries,
    speedups,
    time_batch1,
)
from onevision.generative.decode import beam_search
from onevision.generative.pruning import NO_PRUNING, PruningConfig, load_pruning
from onevision.markdown import table as markdown_table

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def trained(args) -> dict:
    from onevision.evaluation.cost import limit_threads, time_single_queries
    from onevision.generative.retriever import OneVisionRetriever

    root = args.root.resolve()
    cfg = load_config(root / "params.yaml")
    if args.queries:
        cfg = cfg.model_copy(update={"pruning": cfg.pruning.model_copy(update={"test_queries": args.queries})})
    chosen = PruningConfig.from_dict(json.loads(args.config)) if args.config else load_pruning(root)
    if chosen is None:
        raise SystemExit(f"{root}: no models/pruning/pruning.json (run stage calibrate_pruning) and no --config given")
    k, shown = decode_k(cfg)
    retriever = OneVisionRetriever.load(root, "dpo", cfg=cfg)
    test = sample_queries(cfg, root, "test", cfg.pruning.test_queries)
    data = decode_set(retriever, test)
    with limit_threads(args.threads):
        result = head_to_head(retriever, data, chosen=chosen, cfg=cfg, k=k, shown=shown)
        n = cfg.pruning.latency_queries
        e2e = {name: time_single_queries(retriever.with_pruning(p), test.images, user_ids=test.user_ids, k=k, n_calls=n, warmup=cfg.pruning.warmup)
               for name, p in (("unpruned", NO_PRUNING), ("chosen", chosen))}
    result["end_to_end_batch1"] = {name: {key: v[key] for key in ("p50_ms", "p95_ms")} for name, v in e2e.items()}
    result["end_to_end_speedup_p50"] = e2e["unpruned"]["p50_ms"] / e2e["chosen"]["p50_ms"]
    result.update({"mode": "trained", "root": str(root), "profile": cfg.profile, "k": k, "chosen_config": chosen.to_dict(),
                   "chosen_label": chosen.label(), "beam_width": retriever.beam_width})
    return result


def synthetic(args) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from beam_search import random_contexts, synthetic_catalog

    from onevision.generative.model import GeneratorConfig, SIDGenerator

    gcfg = load_config(REPO / "params.yaml", profile=args.profile).generative.model
    trie = synthetic_catalog(args.items, tuple(int(v) for v in args.codebooks.split(",")))
    torch.manual_seed(0)
    mcfg = GeneratorConfig(
        codebook_sizes=trie.codebook_sizes, token_dim=64, n_visual_tokens=16, embed_dim=128, n_users=0, history_len=gcfg.history_len,
        d_model=gcfg.d_model, n_heads=gcfg.n_heads, n_enc_layers=gcfg.n_enc_layers, n_dec_layers=gcfg.n_dec_layers, mlp_ratio=gcfg.mlp_ratio,
        dropout=0.0, visual_grid=gcfg.visual_grid if gcfg.visual_grid and gcfg.visual_grid <= 4 else 0,
    )
    chosen = PruningConfig.from_dict(json.loads(args.config)) if args.config else PruningConfig(beam_margin=3.0, level_beam_widths=(4, 8), early_exit=True)
    model = SIDGenerator(mcfg).eval()
    ctx = random_contexts(mcfg, args.queries or 256)

    class Decoder:  # what calibrate's timing helpers need of a retriever
        def __init__(self):
            self.model, self.trie, self.beam_width = model, trie, args.beam_width

    decoder = Decoder()
    data = DecodeSet(test=list(range(len(ctx))), contexts=ctx, singles=[ctx.index(torch.tensor([i])) for i in range(len(ctx))])
    k = args.k
    torch.set_num_threads(args.threads)
    ranked, batched = {}, {}
    for name, config in (("unpruned", NO_PRUNING), ("chosen", chosen)):
        beam_search(model, ctx.index(torch.arange(min(64, len(ctx)))), trie=trie, beam_width=args.beam_width, k=k, pruning=config)  # warm-up
        t0 = time.perf_counter()
        ids = [beam_search(model, ctx.index(torch.arange(s, min(len(ctx), s + 64))), trie=trie, beam_width=args.beam_width, k=k, pruning=config).item_ids
               for s in range(0, len(ctx), 64)]
        batched[name] = {"batched_ms_per_query": 1e3 * (time.perf_counter() - t0) / len(ctx)}
        ranked[name] = torch.cat(ids).numpy()
    b1 = time_batch1(decoder, data, k=k, configs=[NO_PRUNING, chosen], n_calls=min(100, len(ctx)), warmup=10)
    for name, lat in zip(("unpruned", "chosen"), b1, strict=True):
        batched[name].update(lat)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ranked["unpruned"], ranked["chosen"], strict=True)])
    return {"mode": "synthetic", "items": trie.n_items, "levels": list(trie.codebook_sizes), "k": k, "beam_width": args.beam_width,
            "queries": len(ctx), "chosen_config": chosen.to_dict(), "chosen_label": chosen.label(), "unpruned": {"latency": batched["unpruned"]},
            "chosen": {"latency": batched["chosen"]}, "speedup": speedups(batched["unpruned"], batched["chosen"]), "topk_overlap": float(overlap)}


def markdown(result: dict, machine: str) -> str:
    lines = ["# Dynamic pruning: chosen operating point vs no pruning", "",
             f"`benchmarks/pruning.py` ({machine}); mode **{result['mode']}**, chosen config `{result['chosen_label']}`, "
             f"k={result['k']}, beam width {result['beam_width']}. Decoding latency per query (image encoding excluded), "
             "batch-1 calls of the two configs interleaved.", ""]
    un, ch = result["unpruned"], result["chosen"]
    latency = [[key, f"{un['latency'][key]:.3f}", f"{ch['latency'][key]:.3f}", f"{result['speedup'][key]:.2f}x"]
               for key in ("batch1_p50_ms", "batch1_p95_ms", "batched_ms_per_query")]
    if result["mode"] == "trained":
        e2e = result["end_to_end_batch1"]
        latency.append(["end-to-end batch-1 p50 ms (encoder + decoding)", f"{e2e['unpruned']['p50_ms']:.3f}", f"{e2e['chosen']['p50_ms']:.3f}",
                        f"{result['end_to_end_speedup_p50']:.2f}x"])
    lines.append(markdown_table(latency, ["", "unpruned", "chosen", "ratio"], align="lrrr"))
    if result["mode"] == "trained":
        quality = [[m, f"{a:.4f}", f"{b:.4f}", f"{100 * (1 - b / a if a else 0.0):+.2f}%"]
                   for m in ("hr@10", "ndcg@10", "mrr", "sim_orders_per_1k", "sim_clicks_per_1k")
                   if (a := un["quality"].get(m)) is not None and (b := ch["quality"].get(m)) is not None]
        lines += ["", f"Quality on {result['queries']} TEST queries (same queries):", "",
                  markdown_table(quality, ["metric", "unpruned", "chosen", "relative loss"], align="lrrr")]
        lines.append(f"\ninvalid-SID rate: unpruned {un['invalid_sid_rate']}, chosen {ch['invalid_sid_rate']}.")
    else:
        lines += ["", f"Synthetic catalog of {result['items']:,} items, levels {result['levels']}; random model. "
                  f"Top-{result['k']} overlap with the unpruned search: {result['topk_overlap']:.3f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", type=Path, default=Path("."), help="Trained project root (after stage calibrate_pruning).")
    ap.add_argument("--synthetic", action="store_true", help="Random model over a synthetic catalog: nothing trained needed.")
    ap.add_argument("--config", default=None, help='Pruning config as JSON (default: the calibrated one), e.g. \'{"early_exit": true}\'.')
    ap.add_argument("--queries", type=int, default=0, help="Queries (trained: TEST sample, default pruning.test_queries; synthetic: 256).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", default="small", help="--synthetic: params.yaml profile whose generative.model shape the model takes.")
    ap.add_argument("--items", type=int, default=2000, help="--synthetic: catalog size.")
    ap.add_argument("--codebooks", default="256,128,32", help="--synthetic: residual codebook sizes (a disambiguation level is added).")
    ap.add_argument("--beam-width", type=int, default=20, help="--synthetic: beam width.")
    ap.add_argument("--k", type=int, default=50, help="--synthetic: results per query.")
    ap.add_argument("--out", type=Path, default=None, help="Output stem (default: benchmarks/results/pruning[_quick]).")
    ap.add_argument("--quick", action="store_true", help="CI smoke run: --synthetic (unless a root is given) with 500 items and 16 queries; trained: 20 TEST queries.")
    args = ap.parse_args()
    if args.quick:
        if args.root == Path("."):
            args.synthetic = True
        args.items, args.queries = 500, args.queries or (16 if args.synthetic else 20)
    if args.out is None:
        args.out = RESULTS / ("pruning_quick" if args.quick else "pruning")
    result = synthetic(args) if args.synthetic else trained(args)
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), load avg {os.getloadavg()[0]:.1f} at the end"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(json_safe({"machine": machine, **result}), indent=2, sort_keys=True) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, machine))
    print(markdown(result, machine))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
