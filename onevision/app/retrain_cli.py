"""`onevision retrain`: the retrain flow from the command line, and the few lines that sum up what it produced.

The command writes the run's profile and overrides into params.yaml, then runs the `retrain` flow from
flows/retrain.py (the file the `retrain` deployment runs) and turns a stop or a failure into an exit code.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated

import typer

from onevision.app import entrypoints
from onevision.app.common import fail, fail_run, project_flow, setup_logging
from onevision.app.options import ProfileOpt, RootOpt, SetOpt
from onevision.config import PARAMS_FILE, ConfigError
from onevision.pipeline import apply_local_state_env, stages_until, write_run_params
from onevision.project import Project
from onevision.stages import read_resources


class RetrainStopped(BaseException):
    """SIGTERM while the retrain flow runs (a BaseException, like KeyboardInterrupt: nothing swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signal = signum


def _raise_stopped(signum: int, frame) -> None:
    raise RetrainStopped(signum)


def retrain_command(
    *,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Stop after this stage (default: run every stage).")
    ] = None,
    promote: Annotated[
        bool,
        typer.Option("--promote/--no-promote", help="Afterwards register the model and run the promotion gates; it then waits for a reviewer (docs/reviewers.md)."),
    ] = False,
    reset: Annotated[
        bool, typer.Option("--reset", help="Drop the overrides recorded in params.yaml by earlier --set (it lists what it drops).")
    ] = False,
    replace_trained: Annotated[
        bool,
        typer.Option("--replace-trained", help="Allow switching the profile or data.source while models/ holds trained models."),
    ] = False,
    push: Annotated[
        bool,
        typer.Option("--push/--no-push", help="Afterwards `dvc push` the outputs to the project's default DVC remote "
                     "(an S3 bucket on a shared stack: infra/README.md)."),
    ] = False,
    root: RootOpt = Path("."),
) -> None:
    """Run the retrain flow (Prefect) over the DVC stages, tracked in MLflow.

    The profile and --set overrides are written to params.yaml (as `dvc exp run
    --set-param` does) so DVC sees them and `dvc repro` alone reproduces the run.
    Each --set adds to the overrides recorded by earlier runs (--reset drops them).
    Unchanged stages are skipped.
    """
    setup_logging()
    root = root.resolve()
    if not (root / PARAMS_FILE).exists():
        fail(f"{root / PARAMS_FILE} not found: run from the project root or pass --root")

    try:
        stages_until(until)
        # Written before Prefect starts: config errors and refused switches fail fast, with nothing run.
        changes = write_run_params(root, profile, overrides or [], reset=reset, replace_trained=replace_trained)
    except ConfigError as exc:
        fail(str(exc))
    for key, change in changes.items():
        if key == "dropped overrides":
            typer.echo(f"params.yaml: --reset dropped {', '.join(change)}")
        elif key != "overrides":
            typer.echo(f"params.yaml: {key} {change[0]!r} -> {change[1]!r}")
    apply_local_state_env(root)
    # lazy: Prefect only when this command runs
    from prefect.exceptions import TerminationSignal

    retrain_flow = project_flow(entrypoints.RETRAIN)  # flows/retrain.py, the file the `retrain` deployment runs

    # SIGTERM becomes an exception: Prefect marks the run Crashed and re-delivers the signal to this handler,
    # so the process still unwinds (the running stage is stopped, Prefect's temporary server shut down)
    # instead of dying on the default action with that server left running.
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        outcomes = retrain_flow(root=str(root), until=until, promote=promote, push=push)
    except (KeyboardInterrupt, TerminationSignal, RetrainStopped) as exc:
        signum = getattr(exc, "signal", signal.SIGINT)
        fail("retrain stopped: the running stage was stopped and DVC kept none of its outputs (dvc.lock is "
              "unchanged for it); finished stages are kept, so `onevision retrain` resumes from that stage", code=128 + signum)
    except Exception as exc:  # the flow already logged the traceback
        fail_run("retrain", exc)
    peaks = read_resources(root)
    typer.echo("\nstage            status     seconds   peak RSS MB")
    for o in outcomes:
        peak = peaks.get(o["stage"], {}).get("peak_rss_mb") if not o["skipped"] else None
        typer.echo(f"{o['stage']:<16} {'skipped' if o['skipped'] else 'ran':<9} {o['seconds']:8.1f}   {'' if peak is None else f'{peak:11.0f}'}")
    total = sum(o["seconds"] for o in outcomes)
    typer.echo(f"{'total':<26} {total:8.1f}")
    for line in retrain_summary(root):
        typer.echo(line)

    uri = Project.open(root).tracking_uri
    mlflow_hint = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"MLflow server {uri}"
    typer.echo(f"\nMLflow: {mlflow_hint}   DVC: dvc metrics show")


def retrain_summary(root: Path) -> list[str]:
    """What a retrain produced, in a few lines: OneVision vs MCA on TEST, the gates, where to look."""
    # lazy: numpy only when this command runs
    from onevision.evaluation.metrics import ORDERS, ORDERS_LABELS, resolve_metric

    path = root / "metrics" / "evaluate.json"
    if not path.exists():
        return []
    results = json.loads(path.read_text())
    ours, base = results.get("onevision"), results.get("mca")
    lines = ["", "OneVision vs MCA on the TEST split:"]
    if ours and base:
        orders = resolve_metric(ORDERS, ours)
        for key, label in (("hr@10", "HR@10"), ("ndcg@10", "NDCG@10"), (orders, ORDERS_LABELS.get(orders, orders)), ("latency_p50_ms", "p50 ms (batch 1)")):
            a, b = ours.get(key), base.get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                ratio = f"{a / b:.3f}x" if b else "-"
                lines.append(f"  {label:<26} {a:10.4g}  vs {b:10.4g}   {ratio}")
    gate = root / "reports" / "gate_report.md"
    if gate.exists():
        verdict = next((ln for ln in gate.read_text().splitlines() if ln.startswith("Verdict:")), "")
        lines.append(f"Gates: {verdict.removeprefix('Verdict: ').strip('.') or 'see the report'} ({gate})")
    else:
        lines.append("Gates: not checked yet (onevision promote, or retrain --promote)")
    lines.append(f"Report: {root / 'reports' / 'evaluate.md'}")
    html = root / "reports" / "evaluate.html"
    if html.exists():
        lines.append(f"Visual report: {html}")
    return lines
