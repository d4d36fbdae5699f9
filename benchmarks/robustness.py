"""Does OneVision vs MCA hold beyond one seed? The same flow on other seeds and harder queries, side by side.

Each variant is one full retrain flow (``onevision retrain --profile P --until evaluate --set ...``) in a
throwaway copy of the project, as ``benchmarks/offline_eval.py`` runs it; the seed changes the demo shop
(catalog, shoppers, log) and every training, ``data.query_difficulty`` makes the shoppers' photos harder.
Writes ``benchmarks/results/robustness_<profile>.md`` and ``.json``: per variant the ratios OneVision / MCA
(HR@10, NDCG@10, simulated orders) and the paired differences with their bootstrap intervals, and each
alignment stage's paired gain.

    python benchmarks/robustness.py --profile small                 # 4 variants, ~20 min on 2 idle cores
    python benchmarks/robustness.py --profile small --variant seed=3 --variant data.query_difficulty=2.0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_eval import RESULTS, make_project, run_flow  # noqa: E402

from onevision.markdown import table as markdown_table

DEFAULT_VARIANTS = ("seed=0", "seed=1", "seed=2", "data.query_difficulty=1.5")
KEYS = (("hr@10", "HR@10"), ("ndcg@10", "NDCG@10"), ("sim_orders_per_1k", "orders/1k"))


def _ci(m: dict, digits: int) -> str:
    """``{"_delta": d, "_delta_ci_lo": lo, "_delta_ci_hi": hi}`` -> ``+d [+lo, +hi]``."""
    d, lo, hi = (m.get(s) for s in ("_delta", "_delta_ci_lo", "_delta_ci_hi"))
    return "—" if d is None else f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def run_variant(profile: str, variant: str, common: list[str] | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="onevision-robust-"))
    try:
        root = make_project(tmp / "project")
        extra = [x for o in (common or []) for x in ("--set", o)]
        seconds = run_flow(root, profile, "evaluate", ["--set", variant, *extra])
        results = json.loads((root / "metrics/evaluate.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours, mca = results["onevision"], results["mca"]
    row = {"variant": variant, "flow_seconds": round(seconds, 1), "test_queries": ours.get("n_queries")}
    for key, _ in KEYS:
        row[key] = {"onevision": ours.get(key), "mca": mca.get(key), "ratio": ours[key] / mca[key] if mca.get(key) else None}
        row[key]["vs_mca"] = {s: ours.get(f"vs_mca_{key}{s}") for s in ("_delta", "_delta_ci_lo", "_delta_ci_hi")}
    for name in ("onevision_sft", "onevision"):
        gains = results.get(name, {})
        row[f"gain_{name}"] = {s: gains.get(f"stage_gain_sim_orders_per_1k{s}") for s in ("_delta", "_delta_ci_lo", "_delta_ci_hi")}
    return row


def markdown(profile: str, rows: list[dict], wall: float, common: list[str] | None = None) -> str:
    sets = "".join(f" --set {c}" for c in common or [])
    lines = [f"# Robustness: OneVision vs MCA across seeds and query difficulty, profile `{profile}`{sets}", "",
             f"`benchmarks/robustness.py --profile {profile}{sets}`: one full retrain flow per variant, "
             f"{wall / 60:.0f} min in all on 2 cores. Test split of each variant's own demo shop; intervals are "
             "paired bootstrap intervals over its test queries (95 %).", "",
             markdown_table([row(r) for r in rows], align="lrlrrlrllll")]
    return "\n".join(lines) + "\n"


def row(r: dict) -> dict[str, str]:
    """One variant's cells of the robustness table."""
    hr, nd, od = r["hr@10"], r["ndcg@10"], r["sim_orders_per_1k"]
    return {"variant": f"`{r['variant']}`", "test q": r["test_queries"], "HR@10 OV / MCA": f"{hr['onevision']:.3f} / {hr['mca']:.3f}",
            "ratio": f"{hr['ratio']:.3f}x", "NDCG@10 ratio": f"{nd['ratio']:.3f}x", "orders/1k OV / MCA": f"{od['onevision']:.1f} / {od['mca']:.1f}",
            "orders ratio": f"{od['ratio']:.3f}x", "Δ HR@10 vs MCA": _ci(hr["vs_mca"], 3), "Δ orders/1k vs MCA": _ci(od["vs_mca"], 1),
            "SFT − pretrain orders": _ci(r["gain_onevision_sft"], 1), "DPO − SFT orders": _ci(r["gain_onevision"], 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="small", help="params.yaml profile (default: small)")
    ap.add_argument("--variant", action="append", help=f"a --set for one run (repeatable; default: {', '.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--set", dest="common", action="append", default=[], help="a --set applied to every variant (repeatable)")
    ap.add_argument("--name", default=None, help="results file stem (default: robustness_<profile>)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for variant in args.variant or DEFAULT_VARIANTS:
        rows.append(run_variant(args.profile, variant, args.common))
        print(f"{variant}: HR@10 {rows[-1]['hr@10']['ratio']:.3f}x, orders {rows[-1]['sim_orders_per_1k']['ratio']:.3f}x", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"robustness_{args.profile}"
    (args.out / f"{stem}.json").write_text(json.dumps({"common": args.common, "rows": rows}, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(args.profile, rows, time.perf_counter() - t0, args.common))
    print(f"wrote {args.out / f'{stem}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
