"""What the SID trie costs: constrained vs unconstrained beam search at the same width.

For each catalog, beam width and batch size, both searches decode the same
queries with the same model; the table gives milliseconds per query (mean ±
std over repeats, after a warm-up run), the constrained search's overhead, the
share of unconstrained generations that name no item (what the trie prevents),
and the trie's build time and memory.

Two sources of model and catalog:

* ``--root``: a project root after stage ``pretrain``/``sft``/``dpo``: the
  trained checkpoint (``--stage``), the real SID table and VAL-query contexts
  (visual tokens from the aligned encoder, user context from the checkpoint);
* otherwise synthetic catalogs of ``--items`` sizes with VRQ-like SIDs (three
  residual levels + a disambiguation level) and a random model of the
  configured shape (``generative.model`` of ``--profile``): the search cost
  does not depend on what the weights learned, only on shapes and the trie.

    .venv/bin/python benchmarks/beam_search.py                              # synthetic 2k / 20k / 200k items
    .venv/bin/python benchmarks/beam_search.py --root .tmp/gen/root --items 0 # trained small-profile model
    .venv/bin/python benchmarks/beam_search.py --quick                      # CI: 2k items, one width, batch 1

Writes benchmarks/results/beam_search.md and .json (``--quick``: beam_search_quick.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from onevision.config import load_config
from onevision.generative.decode import beam_search
from onevision.generative.model import ACTION_PAD, Context, GeneratorConfig, SIDGenerator
from onevision.generative.trie import SIDTrie
from onevision.markdown import table as markdown_table

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def synthetic_catalog(n_items: int, sizes: tuple[int, ...], seed: int = 0) -> SIDTrie:
    """VRQ-like SIDs: skewed residual codes (popular coarse clusters) + a disambiguation rank."""
    rng = np.random.default_rng(seed)
    levels = []
    for v in sizes:
        p = rng.dirichlet(np.full(v, 0.5))  # codebook usage is uneven, as in a trained RQ
        levels.append(rng.choice(v, size=n_items, p=p))
    codes = np.stack(levels, axis=1)
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    rank = np.empty(n_items, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
    counts = np.diff(np.r_[starts, n_items])
    rank[order] = np.arange(n_items) - np.repeat(starts, counts)
    sids = np.concatenate([codes, rank[:, None]], axis=1)
    return SIDTrie(sids, np.arange(n_items), (*sizes, int(rank.max()) + 1))


def random_contexts(cfg: GeneratorConfig, n: int, seed: int = 0) -> Context:
    g = torch.Generator().manual_seed(seed)
    H, L = cfg.history_len, cfg.n_levels
    return Context(
        visual=torch.randn(n, cfg.n_visual_tokens, cfg.token_dim, generator=g),
        image=torch.nn.functional.normalize(torch.randn(n, cfg.embed_dim, generator=g), dim=1) if cfg.embed_dim else None,
        user=torch.zeros(n, dtype=torch.long),
        history=torch.full((n, H, L), -1, dtype=torch.long),
        action=torch.full((n, H), ACTION_PAD, dtype=torch.long),
    )


def trained_setup(root: Path, stage: str, n: int):
    """Model, trie and VAL-query contexts from a project root."""
    from onevision.generative.inputs import load_generative_data

    cfg = load_config(REPO / "params.yaml", profile="small", overrides=[f"generative.decode.probe_queries={n}"])
    from onevision.generative.checkpoint import checkpoint_dir, load_checkpoint

    model = load_checkpoint(checkpoint_dir(root, stage)).model.eval()
    data = load_generative_data(cfg, root, catalog_views=False)
    trie = SIDTrie.from_sid_table(_sid_table(root), tuple(model.cfg.codebook_sizes))
    ctx = data.val.rows.context(data.bank, torch.arange(min(n, len(data.val))))
    return model, trie, ctx


def _sid_table(root: Path):
    from onevision.vrq.api import load_sid_table

    return load_sid_table(root)


def time_search(model, ctx: Context, trie: SIDTrie, *, width: int, k: int, batch: int, constrained: bool, repeats: int) -> tuple[list[float], float]:
    """Per-query milliseconds of each repeat (after one warm-up) and the invalid-SID rate."""
    n = len(ctx)

    def run() -> float:
        invalid, count = 0.0, 0
        for start in range(0, n, batch):
            res = beam_search(model, ctx.index(torch.arange(start, min(n, start + batch))), trie=trie, beam_width=width, k=k, constrained=constrained)
            m = int(torch.isfinite(res.scores).sum())
            invalid += res.invalid_rate * m
            count += m
        return invalid / max(count, 1)

    invalid = run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - t0) / n)
    return times, invalid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=None, help="Project root with a trained checkpoint (adds a 'trained' catalog row).")
    ap.add_argument("--stage", default="dpo", choices=["pretrain", "sft", "dpo"])
    ap.add_argument("--profile", default="small", help="params.yaml profile whose generative.model shape the synthetic model takes.")
    ap.add_argument("--items", default="2000,20000,200000", help="Synthetic catalog sizes ('0': none).")
    ap.add_argument("--codebooks", default="64,16,8", help="Synthetic residual codebook sizes (a disambiguation level is added).")
    ap.add_argument("--widths", default="10,20,50")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=256, help="Queries per measurement (batch 1 uses a quarter).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="Output stem (default: benchmarks/results/beam_search[_quick]).")
    ap.add_argument("--quick", action="store_true", help="CI smoke run: 2k items (or --items), width 10, batch 1, 16 queries, 1 repeat.")
    args = ap.parse_args()
    if args.quick:
        if args.items == ap.get_default("items"):
            args.items = "2000"
        args.widths, args.batches, args.queries, args.repeats = "10", "1", 16, 1
    if args.out is None:
        args.out = RESULTS / ("beam_search_quick" if args.quick else "beam_search")
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    setups = []
    if args.root is not None:
        t0 = time.perf_counter()
        model, trie, ctx = trained_setup(args.root, args.stage, args.queries)
        setups.append((f"trained ({args.stage})", model, trie, ctx, time.perf_counter() - t0))
    gcfg = load_config(REPO / "params.yaml", profile=args.profile).generative.model
    sizes = tuple(int(v) for v in args.codebooks.split(","))
    for n_items in [int(v) for v in args.items.split(",") if int(v) > 0]:
        t0 = time.perf_counter()
        trie = synthetic_catalog(n_items, sizes)
        build = time.perf_counter() - t0
        torch.manual_seed(0)
        cfg = GeneratorConfig(
            codebook_sizes=trie.codebook_sizes, token_dim=64, n_visual_tokens=16, embed_dim=128, n_users=0, history_len=gcfg.history_len,
            d_model=gcfg.d_model, n_heads=gcfg.n_heads, n_enc_layers=gcfg.n_enc_layers, n_dec_layers=gcfg.n_dec_layers, mlp_ratio=gcfg.mlp_ratio, dropout=0.0,
        )
        setups.append((f"synthetic {n_items:,}", SIDGenerator(cfg).eval(), trie, random_contexts(cfg, args.queries), build))

    rows = []
    for label, model, trie, ctx, build in setups:
        print(f"{label}: {trie.n_items} items, SID levels {trie.codebook_sizes}, trie {trie.memory_bytes() / 2**20:.1f} MiB, build {build:.2f} s", flush=True)
        for batch in batches:
            sub = ctx.index(torch.arange(min(len(ctx), max(16, args.queries // 4) if batch == 1 else args.queries)))
            for width in widths:
                con, _ = time_search(model, sub, trie, width=width, k=args.k, batch=batch, constrained=True, repeats=args.repeats)
                unc, invalid = time_search(model, sub, trie, width=width, k=args.k, batch=batch, constrained=False, repeats=args.repeats)
                row = {
                    "catalog": label, "items": trie.n_items, "levels": list(trie.codebook_sizes), "trie_mib": round(trie.memory_bytes() / 2**20, 2),
                    "build_s": round(build, 3), "batch": batch, "width": max(width, args.k), "queries": len(sub),
                    "constrained_ms": round(float(np.mean(con)), 3), "constrained_std": round(float(np.std(con)), 3),
                    "unconstrained_ms": round(float(np.mean(unc)), 3), "unconstrained_std": round(float(np.std(unc)), 3),
                    "overhead_pct": round(100 * (np.mean(con) / np.mean(unc) - 1), 1), "unconstrained_invalid_rate": round(invalid, 4),
                }
                rows.append(row)
                print(f"  batch {batch:>3} width {row['width']:>3}: constrained {row['constrained_ms']:.2f} ± {row['constrained_std']:.2f} ms/q, "
                      f"unconstrained {row['unconstrained_ms']:.2f} ± {row['unconstrained_std']:.2f} ms/q, overhead {row['overhead_pct']:+.1f} %, "
                      f"unconstrained invalid {row['unconstrained_invalid_rate']:.1%}", flush=True)

    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, load avg {os.getloadavg()[0]:.1f} at the end"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Constrained vs unconstrained beam search",
        "",
        f"`benchmarks/beam_search.py` ({machine}). Milliseconds per query, mean ± std over {args.repeats} repeats after a warm-up; "
        f"top-{args.k}; the effective width is max(beam width, k). *invalid* is the share of the unconstrained search's "
        "generations that name no catalog item (the constrained search's is 0 by construction).",
        "",
        markdown_table([{"catalog": r["catalog"], "items": f"{r['items']:,}", "trie MiB": r["trie_mib"], "trie build s": r["build_s"],
                         "batch": r["batch"], "width": r["width"],
                         "constrained ms/q": f"{r['constrained_ms']:.2f} ± {r['constrained_std']:.2f}",
                         "unconstrained ms/q": f"{r['unconstrained_ms']:.2f} ± {r['unconstrained_std']:.2f}",
                         "overhead": f"{r['overhead_pct']:+.1f} %", "unconstrained invalid": f"{r['unconstrained_invalid_rate']:.1%}"}
                        for r in rows], align="l" + "r" * 9),
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
