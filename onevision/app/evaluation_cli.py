"""`onevision evaluate`: the offline evaluation from the command line (the stage, with knobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onevision.app.common import load_project, setup_logging
from onevision.app.options import ProfileOpt, RootOpt, SetOpt
from onevision.stages import write_metrics


def evaluate_command(
    *,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    systems: Annotated[
        str | None, typer.Option("--systems", help="Comma-separated system names (default: every system whose artifacts exist).")
    ] = None,
    max_queries: Annotated[int | None, typer.Option("--max-queries", help="Evaluate a seeded sample of this many test queries.")] = None,
    no_cost: Annotated[bool, typer.Option("--no-cost", help="Skip latency, throughput and memory measurements (quality only).")] = False,
    root: RootOpt = Path("."),
) -> None:
    """Evaluate MCA, OneVision and the reference systems on the TEST split.

    Writes metrics/evaluate.json, reports/evaluate.md and plots/evaluate_*.png
    under --root (as the `evaluate` stage does) and prints the headline table.
    """

    setup_logging()
    extra = list(overrides or [])
    if systems:
        extra.append(f"evaluate.systems=[{','.join(s.strip() for s in systems.split(','))}]")
    if max_queries:
        extra.append(f"evaluate.max_queries={max_queries}")
    cfg = load_project(root, profile, extra)
    # lazy: numpy ~0.1 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.comparison.stage import run_evaluation
    from onevision.evaluation.metrics import ORDERS, resolve_metric

    results = run_evaluation(cfg, root, measure_cost=not no_cost)
    write_metrics(root, "evaluate", results)
    typer.echo(f"\n{'system':<16} {'HR@10':>7} {'MRR':>7} {'orders/1k':>10} {'p50 ms':>8} {'QPS':>8}")
    for name, m in results.items():
        cells = [m.get("hr@10"), m.get("mrr"), m.get(resolve_metric(ORDERS, m)), m.get("latency_p50_ms"), m.get("qps")]
        typer.echo(f"{name:<16} " + " ".join(f"{c:>{w}.{d}f}" if c is not None else f"{'-':>{w}}"
                                             for c, w, d in zip(cells, (7, 7, 10, 8, 8), (3, 3, 1, 2, 0), strict=True)))
    typer.echo(f"\nreport: {root / 'reports/evaluate.md'}   metrics: {root / 'metrics/evaluate.json'}")
    if not results:
        raise typer.Exit(1)
