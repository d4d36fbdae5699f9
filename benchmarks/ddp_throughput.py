"""Data-parallel training throughput: one generative stage with 1 process vs N processes under torchrun (gloo).

Builds a stand-in project (the generative stages' inputs: the demo shop, a saved random encoder, random
unique SIDs; `build_project(root, "stand-in")` of tests/support/projects.py), then runs ``onevision stage run pretrain`` (and ``sft``) once with
``distributed.nproc_per_node=1`` and ``generative.threads=T`` and once with N processes of T/N threads each,
the same global batch and seed. Reports each stage's wall time (process start to exit, torchrun included),
its training time and examples per second, and the N-process speed-up.

    python benchmarks/ddp_throughput.py            # 2,000 items, 12,000 queries (~4 min on 2 cores)
    python benchmarks/ddp_throughput.py --quick    # the test's tiny project (CI, ~1 min)

On a 2-core machine both runs use the same 2 cores, so the ratio measures the data-parallel overhead
(gradient all-reduce, duplicated input pipeline), not a scale-out gain; on a machine with more cores or
GPUs per process it is the scale-out. Writes ``benchmarks/results/ddp_throughput{,_quick}.md`` and ``.json``.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from onevision.markdown import table as markdown_table  # noqa: E402
from tests.support.projects import TINY_STAND_IN, build_project  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FULL = [
    "data.n_items=2000", "data.n_users=300", "data.n_queries=12000", "data.n_brands=20",
    "generative.pretrain.epochs=2", "generative.sft.epochs=1", "generative.decode.probe_queries=100",
]
STAGES = ("pretrain", "sft")


def _set(root: Path, processes: int, threads: int) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["overrides"].setdefault("distributed", {})["nproc_per_node"] = processes
    params["overrides"].setdefault("generative", {})["threads"] = threads
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run(root: Path, stage: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onevision", "stage", "run", stage, "--root", str(root)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{stage} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((root / "metrics" / f"{stage}.json").read_text())
    epochs = len([e for e in metrics.get("history", {}).values() if "loss" in e]) or 1
    train = metrics["train_seconds"] - metrics.get("leaf_seconds", 0.0)
    return {"wall_s": round(wall, 2), "train_s": round(train, 2), "examples": metrics["n_examples"], "epochs": epochs,
            "examples_per_s": round(metrics["n_examples"] * epochs / max(train, 1e-9), 1),
            "hr_at_10": metrics["probe"]["hr_at_10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny test project (CI)")
    parser.add_argument("--processes", type=int, default=2, help="data-parallel processes of the second run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in total (split across processes)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    args = parser.parse_args()
    overrides = [*TINY_STAND_IN, *(FULL if not args.quick else []), "generative.model.dropout=0.0"]
    with tempfile.TemporaryDirectory(prefix="onevision-ddp-") as tmp:
        one = Path(tmp) / "one"
        one.mkdir()
        build_project(one, "stand-in", profile="small", overrides=overrides)
        many = Path(tmp) / "many"
        shutil.copytree(one, many)
        _set(one, 1, args.threads)
        _set(many, args.processes, max(1, args.threads // args.processes))
        rows = []
        for stage in STAGES:
            a, b = _run(one, stage), _run(many, stage)
            rows.append({"stage": stage, "one": a, "many": b,
                         "throughput_ratio": round(b["examples_per_s"] / a["examples_per_s"], 3),
                         "wall_ratio": round(b["wall_s"] / a["wall_s"], 3)})
            print(f"{stage}: 1 process {a['examples_per_s']} ex/s, {args.processes} processes {b['examples_per_s']} ex/s")
    suffix = "_quick" if args.quick else ""
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "processes": args.processes,
           "threads_total": args.threads, "quick": args.quick, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"ddp_throughput{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Data-parallel training throughput ({'quick' if args.quick else 'full'})", "",
             f"{out['machine']}; {args.threads} torch threads in total; 1 process vs {args.processes} under torchrun (gloo).",
             "Same seed and global batch. Generated by `python benchmarks/ddp_throughput.py"
             + (" --quick" if args.quick else "") + "`.", "",
             markdown_table([[r["stage"], f"{r['one']['examples']} x {r['one']['epochs']}", r["one"]["examples_per_s"], r["many"]["examples_per_s"],
                              f"{r['throughput_ratio']}x", r["one"]["wall_s"], r["many"]["wall_s"],
                              f"{r['one']['hr_at_10']:.3f} / {r['many']['hr_at_10']:.3f}"] for r in rows],
                            ["stage", "examples x epochs", "1 proc ex/s", "N proc ex/s", "throughput ratio", "1 proc wall s", "N proc wall s",
                             "probe HR@10 (1 / N)"], align="l" + "r" * 7)]
    (args.out / f"ddp_throughput{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
