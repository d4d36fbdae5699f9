"""`onevision evaluate` and `onevision evaluate-sharded`: the offline evaluation from the command line (the stage,
with knobs), and its quality pass sharded over Dask workers (the `evaluate-sharded` flow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onevision import paths
from onevision.app import entrypoints
from onevision.app.common import fail, load_project, project_flow, setup_logging
from onevision.app.options import ProfileOpt, RootOpt, SetOpt
from onevision.config import PARAMS_FILE
from onevision.pipeline import apply_local_state_env
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
    # lazy: numpy only when this command runs
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


def evaluate_sharded_command(
    *,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Dask worker processes of the local cluster (one shard each).")] = 2,
    address: Annotated[
        str | None, typer.Option("--address", help="Use a running Dask scheduler (tcp://host:8786) instead of a local cluster.")
    ] = None,
    systems: Annotated[
        str | None, typer.Option("--systems", help="Comma-separated system names (default: evaluate.systems).")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch/BLAS threads per shard.")] = 1,
    no_embed: Annotated[bool, typer.Option("--no-embed", help="Skip re-embedding the catalog (rank and score only).")] = False,
    embeddings_out: Annotated[
        Path | None, typer.Option("--embeddings-out", help="Also write the fused item embeddings to this .npz.", dir_okay=False)
    ] = None,
    root: RootOpt = Path("."),
) -> None:
    """Embed the catalog and evaluate quality with the work sharded over Dask workers (Prefect's Dask runner).

    Same merged ranked lists and quality metrics as the serial `evaluate` stage (shards are whole batches
    of it); no latency or memory measurement. Writes reports/evaluate_sharded.json.
    """
    setup_logging()
    root = root.resolve()
    if not (root / PARAMS_FILE).exists():
        fail(f"{root / PARAMS_FILE} not found: run from the project root or pass --root")
    cfg = load_project(root, None, None)
    names = [s.strip() for s in systems.split(",")] if systems else list(cfg.evaluate.systems)

    apply_local_state_env(root)
    sharded = project_flow(entrypoints.EVALUATE_SHARDED)  # flows/sharded.py, the file the `evaluate-sharded` deployment runs
    report = root / paths.REPORTS / "evaluate_sharded.json"
    try:
        out = sharded(str(root), workers=workers, address=address, systems=names, threads=threads, embed=not no_embed,
                      embeddings_out=str(embeddings_out) if embeddings_out else None, report=str(report))
    except (FileNotFoundError, ValueError) as exc:
        fail(f"evaluate-sharded: {exc}")
    typer.echo(f"\n{'system':<16} {'HR@10':>7} {'MRR':>7} {'queries':>8}")
    for name, m in out["systems"].items():
        typer.echo(f"{name:<16} {m.get('hr@10', float('nan')):>7.3f} {m.get('mrr', float('nan')):>7.3f} {m['n_queries']:>8}")
    if "embeddings" in out:
        e = out["embeddings"]
        diff = e.get("embeddings_max_abs_diff")
        typer.echo(f"\nembedded {e['views']} views of {e['items']} items in {e['shards']} shards"
                   + (f" (max |diff| vs data/embeddings/items.npz: {diff:.2e})" if diff is not None else ""))
    typer.echo(f"report: {report}")
