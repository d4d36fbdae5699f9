"""The generator's own evidence: what the tied decoder retrieves alone, whether the shipped model uses it, and
whether it generates for the shopper (the generator issue's measurements, one run on a trained project).

Reads a project where every stage up to ``evaluate`` has run and writes, side by side:

1. the ablation table of ``metrics/evaluate.json`` (TEST): prior only, decoder only, no decoder, shipped,
   the stage rows, MCA; each as a ratio to MCA;
2. the decoder weight VAL chose after pretraining and after SFT, with the VAL table by weight
   (``metrics/pretrain.json``, ``metrics/sft.json``);
3. personalised generation, on TEST queries of known shoppers: the decoder alone (no geometry term, no shopper prefix term, no leaf
   head, the shipped beam width) decoding the same photo for the shopper and anonymously: the share of
   queries whose beams differ, and the beam's recall of the items the shopper clicked or ordered other
   than the photographed one, personalised minus anonymous with a paired bootstrap interval (queries
   resampled jointly); the same for the shipped model (its weight, with the leaf head) at k = shown.

    python benchmarks/generator.py --root PROJECT            # writes benchmarks/results/generator_<profile>.md/.json
    python benchmarks/generator.py --root PROJECT --quick    # 100 TEST queries, written as generator_<profile>_quick.*
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from onevision.markdown import table as markdown_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ROWS = (
    ("onevision_prior_only", "geometry alone (no decoder, no leaf head, no shopper term)"),
    ("onevision_learned_only", "the decoder alone (its own trie-constrained generation, no shopper term)"),
    ("onevision_prior_learned", "geometry + decoder (no leaf head, no shopper term)"),
    ("onevision_no_decoder", "geometry + leaf head (shipped before the tied decoder)"),
    ("onevision_no_shopper_beam", "shipped model, the same beam for every shopper (no shopper prefix term)"),
    ("onevision_pretrain", "shipped model after pretraining"),
    ("onevision_sft", "shipped model after SFT"),
    ("onevision", "shipped model (after DPO)"),
    ("mca", "MCA (LambdaMART ranker)"),
)


def ablation_table(evaluation: dict) -> list[dict]:
    mca = evaluation["mca"]
    rows = []
    for name, what in ROWS:
        m = evaluation.get(name)
        if not m:
            continue
        rows.append({"system": name, "what": what, "hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"], "orders/1k": m["sim_orders_per_1k"],
                     "p50 ms": m.get("latency_p50_ms"), "HR@10 / MCA": m["hr@10"] / mca["hr@10"],
                     "orders / MCA": m["sim_orders_per_1k"] / mca["sim_orders_per_1k"]})
    return rows


def personalisation(root: Path, max_queries: int | None) -> dict:
    """Decoder-alone and shipped beams for the same TEST photos, for the shopper and anonymously."""
    import torch

    from onevision.config import load_config
    from onevision.evaluation.harness import load_test_set
    from onevision.evaluation.metrics import paired_delta_ci
    from onevision.generative.geosearch import geometric_beam_search
    from onevision.generative.retriever import OneVisionRetriever

    cfg = load_config(root / "params.yaml")
    if max_queries:
        cfg.evaluate.max_queries = max_queries
    test = load_test_set(cfg, root)
    retriever = OneVisionRetriever.load(root, "dpo", cfg=cfg)
    known = retriever.checkpoint.user_rows(test.user_ids) > 0
    idx = np.flatnonzero(known)
    W = retriever.beam_width
    shown = max(10, cfg.evaluate.shown or cfg.data.impressions_per_query)
    out: dict = {"n_queries": int(len(idx)), "beam_width": W, "shown": shown, "learned_weight": float(retriever.model.learned_weight),
                 "shopper_weight": float(retriever.model.shopper_weight)}
    others = [set(test.clicked[i][test.clicked[i] >= 0].tolist()) | set(test.ordered[i][test.ordered[i] >= 0].tolist()) for i in idx]
    others = [o - {int(test.target_ids[i])} for o, i in zip(others, idx, strict=True)]
    has = np.array([len(o) > 0 for o in others])
    whole_beam = W * cfg.generative.decode.max_leaves  # every item under the W kept prefixes
    # the decoder alone without the shopper's prefix term (that term is not the decoder's; the shipped rows keep it)
    for label, opts, k in (("decoder_alone", {"geo_weight": 0.0, "use_leaf": False, "shopper_weight": 0.0}, W), ("shipped_beam", {"use_leaf": False}, whole_beam),
                           ("shipped", {}, shown)):
        system = retriever.with_options(label, **opts) if opts else retriever  # its context carries the visual tokens the decoder reads
        lists = {}
        for who in ("personal", "anonymous"):
            users = test.user_ids[idx] if who == "personal" else np.full(len(idx), -1)
            ids = []
            for start in range(0, len(idx), 128):
                sl = slice(start, start + 128)
                ctx = system.context(test.images[idx[sl]], users[sl])
                with torch.inference_mode():
                    res = geometric_beam_search(retriever.model, ctx, trie=retriever.trie, beam_width=W if label == "shipped_beam" else max(W, k), k=k, **opts)
                ids.append(res.item_ids.numpy())
            lists[who] = np.concatenate(ids)
        differ = float(np.mean([set(a.tolist()) != set(b.tolist()) for a, b in zip(lists["personal"], lists["anonymous"], strict=True)]))
        recall = {who: np.array([len(set(row.tolist()) & o) / len(o) for row, o, h in zip(lists[who], others, has, strict=True) if h]) for who in lists}
        if not has.any():  # no TEST shopper clicked anything besides the photographed item
            out[label] = {"k": k, "beams_differ": differ, "recall_other_clicked_personal": float("nan"), "recall_other_clicked_anonymous": float("nan"),
                          "delta": float("nan"), "ci": [float("nan"), float("nan")], "n_with_other_clicks": 0}
            continue
        delta, lo, hi = paired_delta_ci(recall["personal"], recall["anonymous"], n_resamples=1000, seed=0)
        out[label] = {"k": k, "beams_differ": differ, "recall_other_clicked_personal": float(recall["personal"].mean()),
                      "recall_other_clicked_anonymous": float(recall["anonymous"].mean()), "delta": delta, "ci": [lo, hi],
                      "n_with_other_clicks": int(has.sum())}
    return out


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="a trained project (stages up to evaluate)")
    ap.add_argument("--quick", action="store_true", help="100 TEST queries; written as *_quick.* (CI's smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md and .json")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    t0 = time.perf_counter()
    evaluation = json.loads((root / "metrics" / "evaluate.json").read_text())
    stages = {s: json.loads((root / "metrics" / f"{s}.json").read_text()) for s in ("pretrain", "sft") if (root / "metrics" / f"{s}.json").exists()}
    profile = _profile(root)
    rows = ablation_table(evaluation)
    pers = personalisation(root, 100 if args.quick else None)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    result = {"profile": profile, "commit": commit, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "ablations": rows, "weights": {s: {k: m.get(k) for k in ("learned_weight", "val_by_decoder_weight", "val_decoder_only_hr_at_10", "val_prior_only_hr_at_10",
                                                       "shopper_weight", "val_by_shopper_weight")}
                                              for s, m in stages.items()},
              "personalisation": pers, "seconds": round(time.perf_counter() - t0, 1)}
    lines = [f"# The generator: ablations, decoder weight, personalised generation ({profile} profile)", "",
             f"Commit {commit}, {result['machine']}; one trained project, TEST split, the same queries for every row; "
             f"`python benchmarks/generator.py --root PROJECT` ({result['seconds']} s).", "",
             "## Ablations (TEST)", "",
             markdown_table([[r["system"], r["what"], *(fmt(r[c]) for c in ("hr@10", "ndcg@10", "orders/1k", "p50 ms", "HR@10 / MCA", "orders / MCA"))] for r in rows],
                            ["system", "what", "HR@10", "NDCG@10", "orders/1k", "p50 ms", "HR@10 / MCA", "orders / MCA"], align="llrrrrrr"), "",
             "## Decoder weight chosen on VAL (orders after the leaf head)", ""]
    for s, w in result["weights"].items():
        lines += [f"- {s}: kept weight {w['learned_weight']}; VAL HR@10 without the leaf head: decoder alone "
                  f"{fmt(w['val_decoder_only_hr_at_10'])}, geometry alone {fmt(w['val_prior_only_hr_at_10'])}"]
        table = w.get("val_by_decoder_weight") or {}
        if table:
            cols = list(next(iter(table.values())))
            lines += ["", markdown_table([[k[1:], *(fmt(v[c]) for c in cols)] for k, v in table.items()], ["weight", *cols], align="r" * (len(cols) + 1)), ""]
        table = w.get("val_by_shopper_weight") or {}
        if table:  # the shopper's prefix term, chosen after SFT on the personalised VAL probe
            cols = list(next(iter(table.values())))
            lines += [f"- {s}: kept shopper weight {w['shopper_weight']} (the shopper's prefix term in the beam; VAL, personalised, after the leaf head)",
                      "", markdown_table([[k[1:], *(fmt(v[c]) for c in cols)] for k, v in table.items()], ["shopper weight", *cols], align="r" * (len(cols) + 1)), ""]
    lines += ["", "## Personalised generation (TEST queries of known shoppers)", "",
              f"{pers['n_queries']} queries; the same photo decoded for its shopper and anonymously. Recall: the share of the items the "
              "shopper clicked or ordered, other than the photographed one, that the list holds (queries with such items only); "
              "paired bootstrap interval of personalised minus anonymous.", "",
              markdown_table([[label, v["k"], fmt(v["beams_differ"]), fmt(v["recall_other_clicked_personal"]), fmt(v["recall_other_clicked_anonymous"]),
                               f"{v['delta']:+.4f} [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}]", v["n_with_other_clicks"]]
                              for label, v in pers.items() if isinstance(v, dict)],
                             ["list", "k", "lists differ", "recall personal", "recall anonymous", "personal - anonymous", "queries"], align="lrrrrrr")]
    suffix = "_quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"generator_{profile}{suffix}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (args.out / f"generator_{profile}{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _profile(root: Path) -> str:
    import yaml

    return str(yaml.safe_load((root / "params.yaml").read_text()).get("profile") or "default")


if __name__ == "__main__":
    main()
