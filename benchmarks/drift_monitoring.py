"""Drift monitor quality and cost: false-alarm rate, detection per shift kind, timing on 10k queries.

On a project root built with the small profile (prepare -> validate -> split,
plus align_encoder for the aligned embedding; vrq for the SID check):

* false alarms: ``--clean-windows`` fresh windows of ``--rows`` queries from
  the same distribution (the demo machinery with seeds 1000, 1001, ...: same
  catalog and shoppers, new searches and photos) and the held-out test split;
  a window that raises any alarm is a false alarm;
* detection: each simulated shift kind over ``--shift-seeds`` seeds;
* timing: one full run (features, Evidently report, HTML) on ``--timing-rows``
  current queries against the configured reference.

    .venv/bin/python benchmarks/drift_monitoring.py --root .tmp/drift/proj --profile small

Writes benchmarks/results/drift_monitoring.md and .json (per-window scores included).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from onevision.config import load_config
from onevision.markdown import table as markdown_table
from onevision.monitoring.check import build_baseline, run_drift_check
from onevision.monitoring.drills import SHIFT_KINDS, drill_window
from onevision.monitoring.window import split_queries

RESULTS = Path(__file__).parent / "results"


def scores(summary: dict) -> dict[str, float | None]:
    return {name: (round(c["score"], 4) if c["score"] is not None else None) for name, c in summary["checks"].items()}


def thresholds(summary: dict) -> dict[str, float]:
    """Effective thresholds (configured, or raised to the noise floor of the window size)."""
    return {name: c["threshold"] for name, c in summary["checks"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="Project root (data/validated, data/splits, models/encoder).")
    ap.add_argument("--profile", default="small")
    ap.add_argument("--rows", type=int, default=1000, help="Queries per current window.")
    ap.add_argument("--clean-windows", type=int, default=20)
    ap.add_argument("--shift-seeds", type=int, default=3)
    ap.add_argument("--timing-rows", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=RESULTS / "drift_monitoring")
    args = ap.parse_args()

    cfg = load_config(args.root / "params.yaml", profile=args.profile)
    tmp = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    t = time.perf_counter()
    baseline = build_baseline(cfg, args.root)
    baseline_seconds = time.perf_counter() - t
    print(f"baseline: {baseline.info['rows']} reference queries, {baseline.embedder.name}, SIDs: {baseline.sid_source} ({baseline_seconds:.1f} s)")

    def check(window, label):
        return run_drift_check(cfg, args.root, current=window, current_label=label, baseline=baseline, out_dir=tmp / label)

    clean = []
    for i in range(args.clean_windows):
        seed = 1000 + i
        s = check(drill_window(cfg, args.root, None, args.rows, seed), f"clean-{seed}")
        clean.append({"seed": seed, "rows": s["current"]["rows"], "alarms": s["alarms"], "scores": scores(s), "thresholds": thresholds(s)})
        print(f"clean seed {seed}: {s['status']:<5} {s['alarms']}  {scores(s)}")
    heldout = check(split_queries(args.root, "test"), "heldout-test")
    print(f"held-out test split ({heldout['current']['rows']} rows): {heldout['status']} {heldout['alarms']}")

    shifted: dict[str, list[dict]] = {}
    for kind in SHIFT_KINDS:
        for j in range(args.shift_seeds):
            seed = 2000 + j
            s = check(drill_window(cfg, args.root, kind, args.rows, seed), f"{kind}-{seed}")
            shifted.setdefault(kind, []).append({"seed": seed, "rows": s["current"]["rows"], "alarms": s["alarms"], "scores": scores(s)})
            print(f"{kind} seed {seed}: {s['status']:<5} {s['alarms']}")

    timing_window = drill_window(cfg, args.root, None, args.timing_rows, 999)
    t = time.perf_counter()
    timed = run_drift_check(cfg, args.root, current=timing_window, current_label="timing", out_dir=tmp / "timing")  # baseline included
    timing_total = time.perf_counter() - t
    t = time.perf_counter()
    timed_warm = check(timing_window, "timing-warm")
    timing_warm = time.perf_counter() - t

    n_false = sum(bool(w["alarms"]) for w in clean)
    per_check_false = {name: sum(name in w["alarms"] for w in clean) for name in clean[0]["scores"]} if clean else {}
    max_clean = {name: max((w["scores"][name] or 0.0) for w in clean) for name in clean[0]["scores"]} if clean else {}
    result = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "root": str(args.root),
        "profile": cfg.profile,
        "rows_per_window": args.rows,
        "embedding_source": baseline.embedder.name,
        "sid_source": baseline.sid_source,
        "thresholds": timed["thresholds"],
        "false_alarms": {"windows": len(clean), "alarmed": n_false, "rate": n_false / max(len(clean), 1),
                         "per_check": per_check_false, "max_clean_score": max_clean},
        "heldout_test": {"rows": heldout["current"]["rows"], "alarms": heldout["alarms"], "scores": scores(heldout)},
        "detection": {kind: {"detected": sum(bool(w["alarms"]) for w in ws), "windows": len(ws),
                             "alarms": sorted({a for w in ws for a in w["alarms"]})} for kind, ws in shifted.items()},
        "timing_10k": {"rows": timed["current"]["rows"], "total_seconds_with_baseline": round(timing_total, 2),
                       "total_seconds_reused_baseline": round(timing_warm, 2), "breakdown": timed["timing"],
                       "breakdown_reused_baseline": timed_warm["timing"],
                       "html_mb": round(Path(timed["artifacts"]["report_html"]).stat().st_size / 1e6, 2)},
        "clean_windows": clean,
        "shifted_windows": shifted,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Drift monitor: false alarms, detection, timing",
        "",
        f"Project `{args.root}` (profile {cfg.profile}); reference: {baseline.info['rows']} train queries; "
        f"embedding: {baseline.embedder.name}; SIDs: {baseline.sid_source}.",
        "",
        f"**False-alarm rate**: {n_false}/{len(clean)} clean windows of {args.rows} queries "
        f"({100 * n_false / max(len(clean), 1):.0f} %); held-out test split ({heldout['current']['rows']} rows): "
        f"{'alarm ' + ', '.join(heldout['alarms']) if heldout['alarms'] else 'no alarm'}.",
        "",
        markdown_table([[name, clean[0]["thresholds"][name], f"{np.mean([w['scores'][name] or 0.0 for w in clean]):.3f} / {top:.3f}", per_check_false[name]]
                        for name, top in max_clean.items()],
                       ["check", "effective threshold", "mean / max score on clean windows", "false alarms"], align="lrrr"),
        "",
        markdown_table([[kind, f"{r['detected']}/{r['windows']}", ", ".join(r["alarms"])] for kind, r in result["detection"].items()],
                       ["shift", "detected", "alarms raised"], align="lrl"),
    ]
    tm = result["timing_10k"]
    lines += [
        "",
        f"**Timing, {tm['rows']} current queries**: {tm['total_seconds_with_baseline']} s including the reference "
        f"({baseline.info['rows']} queries), {tm['total_seconds_reused_baseline']} s with the reference reused; "
        f"breakdown {tm['breakdown']}; HTML {tm['html_mb']} MB. Machine: {result['machine']['cpus']} CPU cores, shared.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
