"""`onevision drift`: check current query traffic for drift, or run a drill.

The command runs the `drift_monitor` flow from flows/drift.py (one route: the scheduled
deployment runs the same file); here only the options are checked and the flow's final
state is turned into an exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from onevision.app import entrypoints
from onevision.app.common import console_without_tracebacks, fail, fail_run, load_project, project_flow, setup_logging
from onevision.app.options import JsonOpt, ProfileOpt, RootOpt, SetOpt
from onevision.pipeline import apply_local_state_env

EXIT_OK, EXIT_DRIFT, EXIT_ERROR, EXIT_INSUFFICIENT, EXIT_INFRA = 0, 1, 2, 3, 4
REFUSED = ("UnapprovedChampion", "BadInput")  # the flow's states that end the command with exit 2 and their message
SHIFT_HELP = "Drill: check a simulated shifted window instead: category-mix, lighting, blur or new-brand."


def drift_command(
    *,
    current: Annotated[
        Path | None,
        typer.Option("--current", help="Query log to check: Parquet file or folder with queries.parquet (default: drift.current_path, else the test split)."),
    ] = None,
    window: Annotated[str | None, typer.Option("--window", help="Check only the latest span of the log, e.g. 24h, 7d (default: drift.window).")] = None,
    simulate_shift: Annotated[str | None, typer.Option("--simulate-shift", help=SHIFT_HELP)] = None,
    drill_rows: Annotated[int, typer.Option("--drill-rows", help="Queries in a drill window.", min=10)] = 2000,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the drill window (default: derived from the config seed).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the report files (default: reports/drift/<run_id>/).")] = None,
    publish: Annotated[bool, typer.Option("--publish/--no-publish", help="Log an MLflow run, upload to storage, send the webhook alert.")] = True,
    as_json: JsonOpt = False,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: RootOpt = Path("."),
) -> None:
    """Compare current query traffic with the champion's training window (Evidently report + JSON summary).

    Runs the `drift_monitor` flow (flows/drift.py, the file the `drift-daily` deployment runs), so the
    command and the schedule check the same things and end the same way.
    Exit 0: no drift; 1: drift (an alarm fired); 3: too few queries for a verdict (nothing published);
    2: bad input, or a champion nobody approved (registry.unapproved_champion: refuse);
    4: infrastructure error (MLflow or the object store failed; the verdict is printed, nothing was alarmed).
    The report lands in reports/drift/<run_id>/ (report.html, summary.json, summary.md); see docs/oncall.md.
    """
    setup_logging()
    # lazy: numpy, pandas only when this command runs
    from onevision.monitoring.drills import SHIFT_KINDS
    from onevision.monitoring.summary import STATUS_DRIFT, STATUS_INSUFFICIENT, STATUS_OK, summary_markdown

    if simulate_shift is not None and simulate_shift not in SHIFT_KINDS:
        fail(f"unknown --simulate-shift {simulate_shift!r}; kinds: {', '.join(SHIFT_KINDS)}")
    if simulate_shift is not None and (current is not None or window is not None):
        fail("--simulate-shift builds its own window; drop --current/--window")
    if current is not None and not (current / "queries.parquet" if current.is_dir() else current).is_file():
        fail(f"--current {current}: not found (a Parquet file, or a folder with queries.parquet)")
    root = root.resolve()
    load_project(root, profile, overrides)  # config errors before Prefect starts
    apply_local_state_env(root)  # Prefect's and MLflow's state inside the project, like `onevision retrain`
    drift_monitor = project_flow(entrypoints.DRIFT)
    console_without_tracebacks()  # the exit code and the state's message say what failed
    state = drift_monitor(
        str(root), profile=profile, overrides=overrides or [], current=str(current.resolve()) if current else None, window=window,
        simulate_shift=simulate_shift, drill_rows=drill_rows, drill_seed=seed, out=str(out.resolve()) if out else None,
        publish=publish, return_state=True,
    )
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):  # an unexpected error in the flow (its log has the details)
        if state.name in REFUSED:
            fail(state.message or state.name)
        fail_run("drift monitor", summary if isinstance(summary, BaseException) else RuntimeError(state.message))
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else summary_markdown(summary))
    if state.name == "InfrastructureError":
        typer.secho(f"infrastructure error (not a drift alarm): {state.message}. The verdict above stands and "
                    "the report is kept locally; fix the store or credentials and rerun.", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_INFRA)
    raise typer.Exit({STATUS_OK: EXIT_OK, STATUS_DRIFT: EXIT_DRIFT, STATUS_INSUFFICIENT: EXIT_INSUFFICIENT}[summary["status"]])
