"""OneVision vs MCA offline, one profile per run: the results table the README links to.

Runs the real retrain flow (``onevision retrain --profile P --until evaluate``)
in a throwaway copy of the project, so every number comes from one run on the
same test queries, then writes ``benchmarks/results/offline_eval_<profile>.md``
and ``.json``:

* the headline ratios: OneVision (and its pruned form) against MCA on exact-item
  HR@10, NDCG@10, simulated orders and batch-1 latency;
* the stage ablation (pretrain only, + SFT, + DPO) on relevance and simulated
  clicks / orders / conversion;
* each stage's wall time, and OneVision's decode latency at batch 1 and batched;
* the evaluation report itself (``reports/evaluate.md``), verbatim.

    python benchmarks/offline_eval.py --profile small            # ~10 min on 2 cores
    python benchmarks/offline_eval.py --profile default          # the demo shop (hours on 2 cores)
    python benchmarks/offline_eval.py --root PROJECT             # an already trained project: report only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from onevision.markdown import table as markdown_table

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results"
COPY = ("params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config")
COPY_DIRS = ("onevision", "flows", "tasks")  # the retrain command runs the flow in flows/ (onevision.app.entrypoints)
# per-1k counts and QPS read best with one decimal, rates and milliseconds with three
ONE_DECIMAL = ("sim_clicks_per_1k", "sim_orders_per_1k", "qps")
HEADLINE = ("hr@10", "ndcg@10", "mrr", "sim_clicks_per_1k", "sim_orders_per_1k", "sim_conversion", "latency_p50_ms", "latency_p95_ms", "qps")


def make_project(dest: Path, ref: str | None = None) -> Path:
    """A fresh git + DVC checkout of this project's code and config in ``dest``: the working tree, or commit ``ref``."""
    dest.mkdir(parents=True)
    if ref:
        archive = subprocess.run(["git", "archive", ref, *COPY_DIRS, *COPY], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        saved = {name: (dest / name).read_bytes() for name in COPY}
        shutil.rmtree(dest / ".dvc")  # dvc init below creates it
    else:
        for name in COPY_DIRS:
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        saved = {name: (REPO / name).read_bytes() for name in COPY}
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=dest, check=True)
    for name, data in saved.items():
        (dest / name).write_bytes(data)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qm", "bench"], cwd=dest, check=True)
    return dest


def run_flow(root: Path, profile: str, until: str, extra: list[str]) -> float:
    # PYTHONPATH: stages import the copied code, not whatever the editable install points at.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(root), "PREFECT_HOME": str(root / ".onevision/prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
           "DVC_SITE_CACHE_DIR": str(root / ".onevision/dvc-site"), "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "onevision"), "retrain", "--profile", profile, "--until", until, *extra]
    print("running:", " ".join(cmd), "in", root, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=env, check=True)
    return time.perf_counter() - t0


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def summarise(root: Path, profile: str, flow_seconds: float | None) -> dict:
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    systems = {k: v for k, v in metrics.items() if isinstance(v, dict) and "hr@10" in v}
    from onevision.stages import stage_names

    stage_seconds = {}
    for stage in stage_names():  # the stage's own wall time, as its metrics report it (flow overhead excluded)
        path = root / "metrics" / f"{stage}.json"
        m = json.loads(path.read_text()) if path.exists() else {}
        if isinstance(m.get("seconds"), (int, float)):
            stage_seconds[stage] = round(float(m["seconds"]), 1)
    ratios = {}
    if "mca" in systems:
        for name in [n for n in systems if n.startswith("onevision")]:
            for key in ("hr@10", "ndcg@10", "sim_orders_per_1k", "latency_p50_ms"):
                a, b = systems[name].get(key), systems["mca"].get(key)
                if a is not None and b:
                    ratios[f"{name}_vs_mca_{key}"] = round(a / b, 4)
    if "onevision_pretrain" in systems:
        base = systems["onevision_pretrain"].get("sim_orders_per_1k")
        for name in ("onevision_sft", "onevision"):
            if name in systems and base:
                ratios[f"{name}_vs_pretrain_sim_orders_per_1k"] = round(systems[name]["sim_orders_per_1k"] / base, 4)
    return {
        "profile": profile,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "flow_seconds": None if flow_seconds is None else round(flow_seconds, 1),
        "stage_seconds": stage_seconds,
        "ratios": ratios,
        "systems": {n: {k: systems[n].get(k) for k in HEADLINE} for n in systems},
    }


def markdown(summary: dict, report: str) -> str:
    s = summary
    lines = [f"# Offline evaluation: OneVision vs MCA, profile `{s['profile']}`", "",
             f"Produced by `benchmarks/offline_eval.py --profile {s['profile']}` on {s['machine']}"
             + (f"; the whole retrain flow took {s['flow_seconds']:.0f} s." if s["flow_seconds"] else "."), "",
             "## Headline (test split, same queries for every system)", "",
             markdown_table([[name, *(_fmt(m.get(k), 1 if k in ONE_DECIMAL else 3) for k in HEADLINE)] for name, m in s["systems"].items()],
                            ["system", "HR@10", "NDCG@10", "MRR", "clicks/1k", "orders/1k", "conversion", "p50 ms", "p95 ms", "QPS"],
                            align="l" + "r" * len(HEADLINE))]
    lines += ["", "## Ratios", ""] + [f"- `{k}`: {v:.3f}" for k, v in s["ratios"].items()]
    lines += ["", "## Stage wall times (s)", "", markdown_table(list(s["stage_seconds"].items()), ["stage", "seconds"], align="lr")]
    lines += ["", "## The evaluation report of this run", ""]
    lines += [line.replace("# Offline evaluation", "### Offline evaluation", 1) if line.startswith("# ") else
              ("#" + line if line.startswith("## ") else line) for line in report.splitlines()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="small", help="params.yaml profile to train and evaluate (default: small)")
    ap.add_argument("--root", type=Path, help="an already trained project: summarise it, train nothing")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set section.key=value for the flow")
    ap.add_argument("--ref", help="train the code and config of this git commit (default: the working tree)")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway project (its path is printed)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    args = ap.parse_args(argv)

    flow_seconds = None
    tmp = None
    if args.root:
        root = args.root.resolve()
        profile = yaml.safe_load((root / "params.yaml").read_text())["profile"]
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f"onevision-eval-{args.profile}-"))
        root = make_project(tmp / "project", args.ref)
        profile = args.profile
        extra = [x for o in args.overrides for x in ("--set", o)]
        flow_seconds = run_flow(root, profile, "evaluate", extra)
    summary = summarise(root, profile, flow_seconds)
    report = (root / "reports/evaluate.md").read_text()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"offline_eval_{profile}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / f"offline_eval_{profile}.md").write_text(markdown(summary, report))
    print(f"wrote {args.out / f'offline_eval_{profile}.md'}")
    for k, v in summary["ratios"].items():
        print(f"  {k}: {v:.3f}")
    if tmp is not None and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp is not None:
        print("project kept at", root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
