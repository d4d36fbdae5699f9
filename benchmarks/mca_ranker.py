"""MCA's ranking stage side by side: LambdaMART (``mca``) vs the pointwise classifier (``mca_pointwise``) vs none.

Takes a trained project (every stage up to ``evaluate`` has run), copies it
(without .git, .venv and caches), retrains only stage ``mca`` there with this
checkout's code, which trains the LambdaMART ranker and, beside it, the
pointwise ablation on the same recall and pre-ranker, then evaluates ``mca``,
``mca_pointwise``, ``mca_no_ranker``, ``knn`` and ``onevision`` on the TEST split
in one run (same queries, same simulator). Paired bootstrap intervals (the
evaluation harness's ``paired_delta_ci``, resampling queries jointly) of mca
minus each ablation on NDCG@10, HR@10 and simulated orders; the MCA stage's
seconds and its VAL tuning record (metrics/mca.json).

    python benchmarks/mca_ranker.py --root PROJECT                  # writes benchmarks/results/mca_ranker_<profile>.md/.json
    python benchmarks/mca_ranker.py --root PROJECT --set mca.ltr_position_debias=false --tag no_debias

``--set`` overrides go to the copy's params.yaml ``overrides`` block (a tuning route tried without editing params.yaml).
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

import numpy as np
import yaml

from onevision.markdown import table as markdown_table

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results"
SYSTEMS = ("mca", "mca_pointwise", "mca_no_ranker", "knn", "onevision")
ABLATIONS = ("mca_pointwise", "mca_no_ranker")
PAIRED = (("ndcg@10", "NDCG@10", 1.0), ("hr@10", "HR@10", 1.0), ("sim_orders", "orders/1k", 1e3))
SKIP = (".git", ".venv", ".onevision", "mlflow.db", "mlruns", "__pycache__", ".ruff_cache", ".pytest_cache")


def copy_project(src: Path, dest: Path) -> Path:
    """The trained project's data, models and config, with this checkout's code (``onevision/``) instead of its own."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*SKIP), symlinks=True)
    shutil.rmtree(dest / "onevision", ignore_errors=True)
    shutil.copytree(REPO / "onevision", dest / "onevision", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def set_overrides(root: Path, overrides: list[str]) -> None:
    if not overrides:
        return
    params = yaml.safe_load((root / "params.yaml").read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        params.setdefault("overrides", {}).setdefault(section, {})[name] = yaml.safe_load(value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_mca_stage(root: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_HOME": str(root / ".onevision/prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DVC_SITE_CACHE_DIR": str(root / ".onevision/dvc-site"), "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "onevision"), "stage", "run", "mca", "--root", str(root)], cwd=root, env=env, check=True)
    return time.perf_counter() - t0


def evaluate(root: Path, seed_systems: tuple[str, ...]) -> tuple[dict, dict]:
    """(per-system metrics, paired intervals of mca minus each ablation) on TEST, in this process (the copy's code)."""
    from onevision.comparison.systems import build_systems
    from onevision.config import load_config
    from onevision.evaluation.cost import limit_threads
    from onevision.evaluation.harness import evaluate_systems, load_test_set
    from onevision.evaluation.metrics import paired_delta_ci

    cfg = load_config(root / "params.yaml")
    test = load_test_set(cfg, root)
    systems = build_systems(cfg, root, names=list(seed_systems))
    shown = cfg.evaluate.shown or cfg.data.impressions_per_query
    with limit_threads(cfg.evaluate.threads):
        runs = {r.name: r for r in evaluate_systems(systems, test, ecfg=cfg.evaluate, shown=shown, seed=cfg.seed, measure_cost=False)}
    paired = {}
    pairs = [("mca", other) for other in ABLATIONS] + [("onevision", "mca")]
    for a, b in ((a, b) for a, b in pairs if a in runs and b in runs):
        for key, label, scale in PAIRED:
            if key in runs[b].per_query:
                delta, lo, hi = paired_delta_ci(runs[a].per_query[key], runs[b].per_query[key], n_resamples=cfg.evaluate.bootstrap,
                                                level=cfg.evaluate.ci_level, seed=cfg.seed)
                paired[f"{a} - {b}: {label}"] = [round(float(v) * scale, 4) for v in (delta, lo, hi)]
    metrics = {name: {k: runs[name].metrics.get(k) for k in ("hr@10", "ndcg@10", "mrr", "sim_orders_per_1k", "sim_clicks_per_1k")}
               for name in seed_systems if name in runs}
    return metrics, {"paired": paired, "test_queries": len(test), "bootstrap": cfg.evaluate.bootstrap, "ci_level": cfg.evaluate.ci_level}


def _by_depth(rows: dict) -> list:
    """Items of a {"@100": ..., "prerank_k=20": ...} mapping in numeric order of the depth."""
    return sorted(rows.items(), key=lambda kv: int("".join(c for c in kv[0] if c.isdigit()) or 0))


def markdown(s: dict) -> str:
    fmt = lambda v, d=3: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"# MCA's ranker: LambdaMART vs pointwise vs none, profile `{s['profile']}`", "",
             f"Produced by `benchmarks/mca_ranker.py` on {s['machine']} ({s['date']}): stage `mca` retrained on the trained project "
             f"{'with ' + ', '.join(s['overrides']) if s['overrides'] else 'as configured'}, then every row evaluated in one run on the same "
             f"{s['test_queries']} TEST queries (OneVision's ablation rows: benchmarks/offline_eval.py). MCA stage {s['mca_stage_seconds']:.1f} s (the stage's own wall time; "
             f"{s['mca_stage_wall_seconds']:.1f} s with process start).", "",
             markdown_table([[n, fmt(m["hr@10"]), fmt(m["ndcg@10"]), fmt(m["mrr"]), fmt(m["sim_clicks_per_1k"], 1), fmt(m["sim_orders_per_1k"], 1)]
                             for n, m in s["systems"].items()], ["system", "HR@10", "NDCG@10", "MRR", "clicks/1k", "orders/1k"], align="lrrrrr"),
             "", f"## Paired differences ({int(100 * s['ci_level'])} % bootstrap intervals, {s['bootstrap']} resamples of the queries)", "",
             markdown_table([[k, f"{d:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]"] for k, (d, lo, hi) in s["paired"].items()],
                            ["difference", "delta", "interval"], align="lrr"),
             "", "## The ranker's VAL tuning (metrics/mca.json)", ""]
    ltr = s["ltr"]
    lines += [f"- position debiasing: `{ltr.get('position_debias')}`; label gain {ltr.get('label_gain')}; photographed product grade "
              f"{ltr.get('exact_grade')}; {ltr.get('train_rows')} TRAIN rows in {ltr.get('train_groups')} groups, {ltr.get('val_groups')} VAL groups", ""]
    trials = ltr.get("trials", [])
    if trials:
        lines += [markdown_table([[t["num_leaves"], t["learning_rate"], t["feature_fraction"], t["rounds"], f"{t['val_ndcg@10']:.4f}", t["seconds"]]
                                  for t in trials], ["num_leaves", "learning_rate", "feature_fraction", "rounds", "VAL NDCG@10", "s"], align="rrrrrr"),
                  "", f"Chosen: {ltr.get('chosen')}", ""]
    sweep = s.get("depth_sweep") or {}
    if sweep:
        lines += ["## Depths on VAL (share of ordered / photographed items kept)", "",
                  markdown_table([[f"recall {d}", fmt(v.get("ordered")), fmt(v.get("exact"))] for d, v in _by_depth(sweep.get("recall", {}))]
                                 + [[f"pre-rank {d}", fmt(v.get("ordered")), fmt(v.get("exact"))] for d, v in _by_depth(sweep.get("prerank", {}))],
                                 ["cut", "ordered item", "photographed item"], align="lrr"), "",
                  markdown_table([[k, fmt(v.get("val_ndcg@10")), fmt(v.get("val_orders_per_1k"), 1)] for k, v in _by_depth(sweep.get("cascade", {}))],
                                 ["cascade", "VAL NDCG@10", "VAL orders/1k"], align="lrr"), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="a trained project (its stages up to evaluate have run); it is not modified")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value for the copy's params (repeatable)")
    ap.add_argument("--tag", default="", help="suffix of the result files (for a tuning variant)")
    ap.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="onevision-mca-ranker-"))
    root = copy_project(args.root.resolve(), tmp / "project")
    set_overrides(root, args.overrides)
    wall = run_mca_stage(root)
    facts = json.loads((root / "metrics/mca.json").read_text())
    metrics, extra = evaluate(root, SYSTEMS)
    profile = yaml.safe_load((root / "params.yaml").read_text()).get("profile", "default")
    summary = {
        "profile": profile, "date": time.strftime("%Y-%m-%d"), "overrides": args.overrides,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "mca_stage_seconds": facts.get("seconds"), "mca_stage_wall_seconds": round(wall, 1),
        "systems": metrics, **extra, "ltr": facts.get("ltr", {}), "depth_sweep": facts.get("depth_sweep"),
        "val": {k: v for k, v in facts.items() if k.startswith("val_")},
    }
    name = f"mca_ranker_{profile}{'_' + args.tag if args.tag else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v)) + "\n")
    (args.out / f"{name}.md").write_text(markdown(summary))
    print(f"wrote {args.out / name}.md")
    print(markdown(summary))
    if args.keep:
        print("project kept at", root)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
