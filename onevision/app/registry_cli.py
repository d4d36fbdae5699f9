"""`onevision promote | approve | reject | rollback | models | audit`: promotion from the command line.

Registered in onevision/app/cli.py with ``app.add_typer(commands)`` (no group name,
so they are top-level commands). Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer

from onevision.app import entrypoints
from onevision.app.common import fail, fail_run, load_project, open_project, project_flow, setup_logging
from onevision.app.options import JsonOpt, RootOpt
from onevision.pipeline import apply_local_state_env
from onevision.project import Project
from onevision.registry.access import is_server, server_identity
from onevision.registry.model_registry import GATES_FAILED, PromotionError, version_id

commands = typer.Typer()

ReviewerOpt = Annotated[str | None, typer.Option(
    "--reviewer", help="Your name, as a check: it must be who you are (on an MLflow server with authentication the account "
    "it authenticated; embedded: $ONEVISION_REVIEWER, else your login) and be listed in registry.reviewers. Naming someone "
    "else is refused.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")]
VersionArg = Annotated[str, typer.Argument(help="Model version number (see `onevision models`).")]


def _echo_record(record: dict) -> None:
    typer.echo(json.dumps(record, indent=2, sort_keys=True, default=str))


def _resume_paused_flow(project: Project, *, version: str, reviewer: str, decision: str, reason: str) -> None:
    """A promotion flow paused for this version: resume it with the same decision so it can finish."""
    mv = project.candidates().version(version)
    flow_run_id = mv.tags.get("prefect.flow_run_id")
    if mv.tags.get("approval_channel") != "prefect-pause" or not flow_run_id:
        return

    # lazy: Prefect only when this command runs
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        typer.echo(f"note: promotion flow run {flow_run_id} is paused on a Prefect server; set PREFECT_API_URL to resume it "
                   "from here, or resume it in the UI (it will find the decision made).")
        return
    try:
        resume_flow_run(UUID(flow_run_id), run_input={"reviewer": reviewer, "decision": decision, "reason": reason})
        typer.echo(f"resumed paused promotion flow run {flow_run_id}")
    except Exception as exc:  # already resumed, timed out, server down: the registry decision stands
        typer.echo(f"note: could not resume flow run {flow_run_id} ({exc}); the decision is recorded in the registry")


def _gates_failed_hint(project: Project, version: str, decision: str) -> list[str]:
    """For a version whose gates failed: which gates, where its gate report is, what to do instead."""
    # lazy: mlflow, numpy, pandas only when this command runs
    from onevision.promotion.report import where_to_read
    from onevision.promotion.workflow import GATE_REPORT

    try:
        registry = project.candidates()
        mv = registry.version(version)
    except Exception:  # noqa: BLE001 - no such version, registry down: the refusal stands without the hint
        return []
    if registry.status(mv) != GATES_FAILED:
        return []
    lines = where_to_read(project.path(GATE_REPORT), registry.name, str(mv.version), mv.tags, registry.tracking_uri)
    if decision == "approve":
        lines.append("a version whose gates failed cannot be approved: fix what failed (retrain), then `onevision promote` "
                     "registers a new candidate")
    return lines


def _decide(decision: str, version: str, reviewer: str | None, reason: str, root: Path) -> None:
    # lazy: mlflow, numpy, pandas only when this command runs
    from onevision.promotion.workflow import ReviewerNotAllowed, decide, decider_identity

    project = open_project(root)
    try:
        name, source = decider_identity(project, reviewer)
        _note_ignored_reviewer_env(name, source)
        record = decide(project, version=version, reviewer=name, decision=decision, reason=reason, identity=source)
    except ReviewerNotAllowed as exc:
        fail(str(exc))
    except PromotionError as exc:
        hint = _gates_failed_hint(project, version, decision) if reason.strip() else []  # no reason: refused before the registry
        fail("\n".join([str(exc), *hint]))
    _echo_record(record)
    # the paused flow waits on the candidate's version (record["version"] is the served one when they differ)
    _resume_paused_flow(project, version=version, reviewer=record["by"], decision=decision, reason=reason)


def _note_ignored_reviewer_env(name: str, source: str) -> None:
    # lazy: mlflow, numpy, pandas only when this command runs
    from onevision.promotion.workflow import REVIEWER_ENV, SERVER_IDENTITY

    claimed = os.environ.get(REVIEWER_ENV, "").strip()
    if source == SERVER_IDENTITY and claimed and claimed != name:
        typer.echo(f"note: ${REVIEWER_ENV}={claimed} is ignored: the MLflow server authenticated you as '{name}'", err=True)


@commands.command()
def approve(version: VersionArg, reason: ReasonOpt, reviewer: ReviewerOpt = None, root: RootOpt = Path(".")) -> None:
    """Approve a candidate that passed its gates: it becomes `champion`, the former champion `previous-champion`.

    You decide as yourself: on an MLflow server with authentication, the account it authenticated (your
    MLFLOW_TRACKING_USERNAME/PASSWORD; the server refuses non-reviewers, HTTP 403); embedded (one person, no
    server), $ONEVISION_REVIEWER if set, else your login name. Either must be listed in registry.reviewers.
    """
    _decide("approve", version, reviewer, reason, root)


@commands.command()
def reject(version: VersionArg, reason: ReasonOpt, reviewer: ReviewerOpt = None, root: RootOpt = Path(".")) -> None:
    """Reject a candidate; the champion stays as it is (you decide as yourself, as for `approve`)."""
    _decide("reject", version, reviewer, reason, root)


@commands.command()
def rollback(
    reason: ReasonOpt,
    by: Annotated[str | None, typer.Option("--by", help="Who rolls back, as a check: must be you ($ONEVISION_REVIEWER, else your login).")] = None,
    root: RootOpt = Path("."),
) -> None:
    """Restore `previous-champion` as `champion` in one step (audited, under your own name)."""
    # lazy: mlflow, numpy, pandas only when this command runs
    from onevision.promotion.workflow import decider_identity
    from onevision.promotion.workflow import rollback as do_rollback

    project = open_project(root)
    try:
        name, source = decider_identity(project, by)
        _note_ignored_reviewer_env(name, source)
        record = do_rollback(project, reason, name, identity=source)
    except PromotionError as exc:
        fail(str(exc))
    _echo_record(record)


@commands.command()
def models(root: RootOpt = Path(".")) -> None:
    """List the registered model's versions: aliases, status, gates, who decided."""
    # lazy: mlflow, numpy, pandas only when this command runs
    from onevision.promotion.workflow import summary

    project = open_project(root)
    registry = project.registry()
    try:
        who = server_identity(registry.tracking_uri)
    except PromotionError as exc:
        fail(str(exc))
    registries = [registry] + ([project.candidates()] if project.cfg.registry.candidates != registry.name else [])
    for i, reg in enumerate(registries):
        rows = summary(reg) if i == 0 else _candidate_rows(reg)
        role = "served" if i == 0 else "candidates"
        typer.echo(f"{'' if i == 0 else chr(10)}{reg.name} ({role}; {reg.tracking_uri})")
        typer.echo(f"{'version':>7}  {'aliases':<28} {'status':<18} {'gates':<7} decided by")
        for row in rows:
            typer.echo(f"{row['version']:>7}  {row['aliases']:<28} {row['status']:<18} {row['gates']:<7} {row['decided_by']}")
        if not rows:
            typer.echo("(no versions yet: run `onevision promote`)")
    if who:
        typer.echo(f"\nauthenticated by the MLflow server as '{who}': the server enforces who may write each model "
                   "(`onevision access check`)")
    elif is_server(registry.tracking_uri):
        typer.echo("\nthis MLflow server runs without authentication: anyone who reaches it can move aliases "
                   "(a moved champion is still refused where it is loaded); see infra/README.md")
    else:
        typer.echo("\nembedded registry (no server, no authentication): one-person setup; you decide as "
                   "$ONEVISION_REVIEWER, else your login (docs/reviewers.md)")
    # lazy: mlflow, numpy, pandas only when this command runs
    from onevision.promotion.workflow import verify_champion

    check = verify_champion(registry)
    if not check.approved:
        typer.secho(f"\nWARNING: {check.reason}.\nSearch and serving refuse it (registry.unapproved_champion); "
                    "`onevision rollback` or `onevision approve VERSION` restores an audited champion.", fg=typer.colors.RED, err=True)


def _candidate_rows(registry) -> list[dict]:
    return [{"version": version_id(mv), "aliases": ",".join(sorted(mv.aliases)), "status": registry.status(mv),
             "gates": {"true": "passed", "false": "failed"}.get(mv.tags.get("gates.passed", ""), "–"),
             "decided_by": mv.tags.get("decided_by", "")} for mv in registry.versions()]


@commands.command()
def audit(
    as_json: JsonOpt = False,
    root: RootOpt = Path("."),
) -> None:
    """Print the promotion audit log: approvals, rejections, rollbacks (who, when, why, gate values)."""
    records = open_project(root).registry().audit_log()
    if as_json:
        typer.echo(json.dumps(records, indent=2, sort_keys=True, default=str))
        return
    for r in records:
        extra = f" (previous champion {r['previous_champion']})" if r.get("previous_champion") else ""
        extra += f" (rolled back {r['rolled_back']})" if r.get("rolled_back") else ""
        extra += f" (candidate {r['candidate']['model']} v{r['candidate']['version']})" if r.get("candidate") else ""
        how = f" [{r['identity']}]" if r.get("identity") else ""
        typer.echo(f"{r['at']}  {r['action']:<8} v{r['version']}{extra}  by {r['by']}{how}: {r['reason']}")
    if not records:
        typer.echo("(no audit records yet)")


@commands.command()
def promote(
    approval: Annotated[
        str | None, typer.Option("--approval", help="pause | registry | auto (default: registry.approval in params.yaml).")
    ] = None,
    root: RootOpt = Path("."),
) -> None:
    """Run the promotion flow: register the project's model as `challenger`, check the gates, wait for a reviewer."""

    setup_logging()
    root = root.resolve()
    load_project(root, None, None)  # config errors before Prefect starts (the flow opens the project itself)
    if approval not in (None, "auto", "pause", "registry"):
        fail(f"--approval must be pause, registry or auto, got {approval!r}")

    apply_local_state_env(root)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect does not create missing parents
    promotion = project_flow(entrypoints.PROMOTION)  # flows/promote.py, the file the `promote` deployment runs
    try:
        outcome = promotion(root=str(root), approval=approval)
    except Exception as exc:
        fail_run("promotion", exc)
    typer.echo(json.dumps(outcome, indent=2, sort_keys=True))
    typer.echo(f"gate report: {root / 'reports/gate_report.md'}")
    if not outcome.get("gates_passed"):
        raise typer.Exit(1)
