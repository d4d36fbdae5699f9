"""One command, every comparison side by side: ``python -m benchmarks run [--quick]``.

Writes one page (``benchmarks/results.md``, a JSON beside it, plots under ``benchmarks/results/``) with the
machine, commit and run time at the top, each comparison as ratios, from one run:

1. **the retrain flow**: wall time and peak RSS of every stage (the stage process's own peak,
   ``.onevision/resources/<stage>.json``), the flow's total, and a no-change rerun;
2. **the systems on the same TEST queries** (``metrics/evaluate.json`` of that flow): OneVision shipped, pruned
   and its ablations vs MCA vs kNN: quality, batch-1 p50/p95/p99 after warm-up, batched throughput, each as a
   ratio to MCA; a quality-vs-latency plot;
3. **dynamic pruning**: the flow's calibrated point (VAL loss with its paired-bootstrap bound, the TEST check)
   and more sweeps of the same grid (full: two, quick: one): does the same point win again;
4. **catalog scaling** (synthetic catalogs, ``benchmarks/geo_scaling.py`` and ``benchmarks/mca_scaling.py``):
   OneVision's decode vs exact recall and MCA's cascade with Flat, IVF and HNSW indexes, ANN recall, memory;
   a cost-vs-catalog-size plot;
5. **constrained vs unconstrained decoding** at the same beam, batch 1 and batched (``benchmarks/beam_search.py``
   on the trained model);
6. **serving memory**: peak RSS of a process that loads the shipped retriever and answers queries, and what its
   model holds;
7. **GPU**: skipped without a CUDA device (CI never has one).

Full mode (the page the README links): fresh throwaway projects, one uninterrupted ``onevision retrain`` per
profile (small and default), 10k / 100k / 1M items. ``--quick`` (CI): the trained project at ``--root``
(CI's ``make demo``), a no-change rerun, 2k / 20k items; writes ``benchmarks/results/run_quick.*`` (not
committed).

    python -m benchmarks run                 # full: about 50 minutes on 2 cores
    python -m benchmarks run --quick --root .
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BIN = Path(sys.executable).parent
SYSTEMS = ("onevision", "onevision_pruned", "onevision_no_decoder", "onevision_no_shopper_beam", "onevision_prior_only",
           "onevision_learned_only", "onevision_pretrain", "onevision_sft", "mca", "mca_pointwise", "mca_no_ranker", "knn")


def _env(root: Path, isolate: bool) -> dict[str, str]:
    """The environment of a retrain in ``root``: its code first on the path; ``isolate`` (a throwaway project): its own
    local state (``onevision.pipeline.local_state_env``) over whatever this shell points at (a team's MLflow server)."""
    from onevision.pipeline import local_state_env

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(root)}
    return {**env, **local_state_env(root)} if isolate else env


def _retrain(root: Path, profile: str, isolate: bool) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "onevision"), "retrain", "--profile", profile], cwd=root, env=_env(root, isolate), check=True)
    return time.perf_counter() - t0


def _script(name: str, args: list[str], out: Path, written: Path | None = None) -> dict:
    """Run ``benchmarks/<name>.py`` with ``--out out``; the JSON it wrote (``out.json``, or ``written``)."""
    cmd = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args, "--out", str(out)]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    return json.loads((written or out.with_suffix(".json")).read_text())


def _profile(root: Path) -> str:
    for line in (root / "params.yaml").read_text().splitlines():
        if line.startswith("profile:"):
            return line.split(":", 1)[1].split("#")[0].strip()
    return "default"


def flow_section(root: Path, profile: str, flow_seconds: float | None) -> dict:
    # flow_seconds None: a project trained before this run (quick mode), whose state the rerun keeps
    """Per-stage wall time and peak RSS of the flow that trained ``root``, then a timed no-change rerun."""
    from onevision.stages import read_resources, stage_names

    resources = read_resources(root)
    stages = [{"stage": s, **{k: resources[s].get(k) for k in ("seconds", "peak_rss_mb")}} for s in stage_names() if s in resources]
    rerun = _retrain(root, profile, isolate=flow_seconds is not None)
    return {"profile": profile, "stages": stages, "flow_seconds": flow_seconds,
            "stage_seconds": round(sum(s["seconds"] or 0 for s in stages), 1), "no_change_rerun_seconds": round(rerun, 1)}


def systems_section(root: Path) -> list[dict]:
    """The systems of the flow's evaluation, same TEST queries, each as a ratio to MCA."""
    from onevision.config import PARAMS_FILE, load_config
    from onevision.evaluation.metrics import ORDERS, resolve_metric

    ev = json.loads((root / "metrics" / "evaluate.json").read_text())
    batch = load_config(root / PARAMS_FILE).evaluate.batch_size
    base = ev.get("mca", {})
    orders = resolve_metric(ORDERS, base) if base else "sim_orders_per_1k"
    rows = []
    for name in SYSTEMS:
        r = ev.get(name)
        if not r:
            continue
        row = {"system": name, "hr@10": r.get("hr@10"), "ndcg@10": r.get("ndcg@10"), "orders_per_1k": r.get(orders),
               "p50_ms": r.get("latency_p50_ms"), "p95_ms": r.get("latency_p95_ms"), "p99_ms": r.get("latency_p99_ms"), "qps_batched": r.get("qps"),
               "batch_size": batch}
        for key, ref in (("hr@10", "hr@10"), ("ndcg@10", "ndcg@10"), ("orders_per_1k", orders), ("p50_ms", "latency_p50_ms")):
            b = base.get(ref)
            row[f"{key}/mca"] = round(row[key] / b, 3) if isinstance(row[key], (int, float)) and b else None
        rows.append(row)
    return rows


def pruning_section(root: Path, reruns: int) -> dict:
    """The flow's calibration (``metrics/pruning.json``: the chosen point, its VAL loss with the paired-bootstrap bound,
    the TEST check) and ``reruns`` more sweeps of the same grid on the same VAL queries (nothing written): the point
    each chooses, to see whether timing noise moves the choice."""
    from onevision.config import PARAMS_FILE, load_config
    from onevision.generative.calibrate import sweep

    cal = json.loads((root / "metrics" / "pruning.json").read_text())
    best, test = cal["chosen"], cal.get("test") or {}
    cfg = load_config(root / PARAMS_FILE)
    choices = [best["label"]]
    for _ in range(reruns):
        choices.append(sweep(cfg, root, test=False)["chosen"]["label"])
    return {"points": len(cal["points"]), "chosen": best["label"], "val_speedup": best["speedup"], "val_loss": best["loss"],
            "val_loss_hi": best.get("loss_hi"), "test_speedup": test.get("speedup"), "test_loss": test.get("loss"),
            "choices": choices, "agreement": max(choices.count(c) for c in choices)}


def serving_memory(root: Path, queries: int = 200) -> dict:
    """Peak RSS of a fresh process that loads the shipped retriever and answers ``queries`` batch-1 searches."""
    code = f"""
import json, numpy as np, torch
from pathlib import Path
from onevision.stages import peak_rss_mb
torch.set_num_threads(1)
base = peak_rss_mb()
from onevision.config import load_config, PARAMS_FILE
from onevision.evaluation.harness import load_test_set
from onevision.generative.retriever import OneVisionRetriever
root = Path({str(root)!r}); cfg = load_config(root / PARAMS_FILE)
imported = peak_rss_mb()
ret = OneVisionRetriever.load(root, "dpo", cfg=cfg)
loaded = peak_rss_mb()
test = load_test_set(cfg, root)
n = min({queries}, len(test))
for i in range(n):
    ret.retrieve(test.images[i:i+1], test.user_ids[i:i+1], 10)
m = ret.model
mb = lambda ts: sum(t.numel() * t.element_size() for t in ts) / 2**20
print(json.dumps({{"queries": n, "peak_rss_mb": peak_rss_mb(), "python_and_torch_mb": base, "after_imports_mb": imported, "after_load_mb": loaded,
    "model_parameters_mb": round(mb(m.parameters()), 1), "item_store_mb": round(mb(m.leaf.buffers()) if m.leaf is not None else 0.0, 1),
    "trie_mb": round(ret.trie.memory_bytes() / 2**20, 1)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=_env(root, isolate=False), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def gpu_section() -> dict:
    try:
        import torch  # lazy: only to ask for a device

        if torch.cuda.is_available():
            return {"skipped": False, "device": torch.cuda.get_device_name(0),
                    "note": "a CUDA device is present; the GPU section's measurements are not implemented in this command yet"}
    except ImportError:
        pass
    return {"skipped": True, "note": "no CUDA device on this machine (CI never has one): GPU section skipped"}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "unknown"
    changed = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.split()
    load = os.getloadavg()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": sys.version.split()[0], "commit": commit + (f" (with local changes to {', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''})" if changed else ""),
            "load_average_at_start": round(load, 2), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI: the trained project at --root, a no-change rerun, 2k/20k items; writes benchmarks/results/run_quick.*")
    ap.add_argument("--root", type=Path, default=None, help="A trained project (every stage up to evaluate has run); --quick needs it, full mode trains its own.")
    ap.add_argument("--profiles", default="small,default", help="Full mode: the profiles to retrain (comma-separated).")
    ap.add_argument("--sizes", default=None, help="Catalog sizes for the scaling section (default 10000,100000,1000000; quick 2000,20000).")
    ap.add_argument("--out", type=Path, default=None, help="Page path (default benchmarks/results.md; quick benchmarks/results/run_quick.md).")
    args = ap.parse_args(argv)
    from benchmarks.page import write_page  # lazy: matplotlib and the table helpers only once the runs are done

    t0 = time.perf_counter()
    info = {"mode": "quick" if args.quick else "full", "machine": machine()}
    sizes = args.sizes or ("2000,20000" if args.quick else "10000,100000,1000000")
    with tempfile.TemporaryDirectory(prefix="onevision-bench-") as tmp:
        work = Path(tmp)
        projects: list[tuple[Path, str, float | None]] = []
        if args.quick or args.root is not None:
            if args.root is None:
                ap.error("--quick needs --root (a trained project, e.g. `.` after `make demo`)")
            root = args.root.resolve()
            projects.append((root, _profile(root), None))
        else:
            from benchmarks.offline_eval import make_project  # lazy: only full mode builds projects

            for profile in args.profiles.split(","):
                root = make_project(work / f"flow-{profile}")
                projects.append((root, profile, _retrain(root, profile, isolate=True)))
        info["flows"] = [flow_section(root, profile, seconds) for root, profile, seconds in projects]
        info["systems"] = {profile: systems_section(root) for root, profile, _ in projects}
        info["pruning"] = {profile: pruning_section(root, reruns=1 if args.quick else 2) for root, profile, _ in projects}
        info["serving_memory"] = {profile: serving_memory(root) for root, profile, _ in projects}
        first = projects[0][0]
        quick = ["--quick"] if args.quick else []
        info["beam_search"] = _script("beam_search", [*quick, "--root", str(first), "--items", "0", *([] if args.quick else ["--widths", "20,50,100"])],
                                      work / "beam_search")
        info["geo_scaling"] = _script("geo_scaling", ["--sizes", *sizes.split(","), *(["--reps", "30"] if args.quick else [])], work,
                                      written=work / "geo_scaling.json")  # its --out is a folder
        index_types = "Flat,IVF,HNSW32"
        # full: enough IVF lists and HNSW candidates for MCA to reach ANN recall >= 0.95 at 1M (the matched-recall comparison)
        info["mca_scaling"] = _script("mca_scaling", ["--sizes", sizes, "--index-types", index_types,
                                                      *(["--queries", "128", "--latency-queries", "20", "--ranker-iters", "50"] if args.quick
                                                        else ["--nprobe", "16,64,256", "--ef-search", "500,2000,8000"])],
                                      work / "mca_scaling")
        info["gpu"] = gpu_section()
        info["run_seconds"] = round(time.perf_counter() - t0, 1)
        out = args.out or (RESULTS / "run_quick.md" if args.quick else REPO / "benchmarks" / "results.md")
        write_page(info, out)
    print(f"wrote {out} ({info['run_seconds']:.0f} s)")
    return 0
