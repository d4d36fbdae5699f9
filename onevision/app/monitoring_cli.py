"""`onevision drift`: check current query traffic for drift, or run a drill.

Light at import (typer only): the monitor, Evidently and torch load inside the
command, so `onevision --help` stays fast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from onevision.app.options import JsonOpt, ProfileOpt, RootOpt, SetOpt
from onevision.config import PARAMS_FILE, ConfigError, load_config
from onevision.pipeline import apply_local_state_env

EXIT_OK, EXIT_DRIFT, EXIT_ERROR, EXIT_INSUFFICIENT, EXIT_INFRA = 0, 1, 2, 3, 4
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

    Exit 0: no drift; 1: drift (an alarm fired); 3: too few queries for a verdict; 2: bad input;
    4: infrastructure error (MLflow or the object store failed; the verdict is printed, nothing was alarmed).
    The report lands in reports/drift/<run_id>/ (report.html, summary.json, summary.md); see docs/oncall.md.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # lazy: numpy ~0.1 s, pandas ~0.4 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.monitoring.drills import SHIFT_KINDS

    def fail(message: str) -> None:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_ERROR)

    if simulate_shift is not None and simulate_shift not in SHIFT_KINDS:
        fail(f"unknown --simulate-shift {simulate_shift!r}; kinds: {', '.join(SHIFT_KINDS)}")
    if simulate_shift is not None and (current is not None or window is not None):
        fail("--simulate-shift builds its own window; drop --current/--window")
    root = root.resolve()
    try:
        cfg = load_config(root / PARAMS_FILE, profile=profile, overrides=overrides or [])
    except ConfigError as exc:
        fail(str(exc))
    # lazy: numpy ~0.1 s, pandas ~0.4 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.monitoring import monitor

    apply_local_state_env(root)  # MLflow's SQLite store inside the project, like `onevision retrain`
    # lazy: mlflow ~1.3 s, numpy ~0.1 s, pandas ~0.4 s only when this command runs (`onevision --help` and the light commands start at once)
    from onevision.promotion.workflow import UnapprovedChampion, check_registry_champion

    try:
        check_registry_champion(cfg, root, "onevision drift")  # monitoring a champion nobody approved: refuse or warn
    except UnapprovedChampion as exc:
        fail(str(exc))
    try:
        frame, label = monitor.current_traffic(cfg, root, current_path=current, window=window, simulate_shift=simulate_shift, drill_rows=drill_rows, drill_seed=seed)
        summary = monitor.run_drift_check(cfg, root, current=frame, current_label=label, out_dir=out)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    infra_errors: list[str] = []
    if publish and summary["status"] != monitor.STATUS_INSUFFICIENT:
        for what, step in (("MLflow", lambda: monitor.log_to_mlflow(cfg, root, summary, {"drill": simulate_shift or "", "source": "cli"})),
                           ("object store", lambda: monitor.upload_reports(cfg, summary))):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the verdict stands; the failure is reported as what it is
                infra_errors.append(f"{what}: {monitor.describe_error(exc)}")
        url = monitor.webhook_url(cfg)
        if summary["drift_detected"] and url:
            try:
                monitor.send_alert(url, summary, cfg.drift.webhook_timeout_s)
            except monitor.AlertError as exc:
                typer.secho(f"warning: alert not delivered: {exc}", fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else monitor.summary_markdown(summary))
    if infra_errors:
        typer.secho(f"infrastructure error (not a drift alarm): {'; '.join(infra_errors)}. The verdict above stands and "
                    f"the report is kept locally; fix the store or credentials and rerun.", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_INFRA)
    code = {monitor.STATUS_OK: EXIT_OK, monitor.STATUS_DRIFT: EXIT_DRIFT, monitor.STATUS_INSUFFICIENT: EXIT_INSUFFICIENT}
    raise typer.Exit(code[summary["status"]])
