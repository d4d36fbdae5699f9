"""The promotion flow: register -> gates -> wait for a reviewer -> promote.

Run it with `onevision promote` or at the end of the retrain flow
(`retrain(..., promote=True)`). Nothing reaches `champion` without passing
every gate and a listed reviewer's yes.

Waiting for the reviewer (``registry.approval``):

* ``pause`` (default on a Prefect server): the flow run pauses with a typed
  form (:class:`ReviewDecision`: reviewer, approve/reject, reason) in the
  Prefect UI, or ``resume_flow_run(id, run_input={...})``. Input the form's
  schema refuses is rejected by the server and the run stays paused. The
  Prefect server does not say who typed the form, so by default
  (``registry.form_decisions: refuse``) a typed decision is logged and the run
  pauses again; with ``allow`` (a UI behind per-reviewer login) a reviewer in
  ``registry.reviewers`` decides, anyone else is logged and the run pauses again. On an MLflow server with
  authentication the decision is made with the worker's own account (the service account), which the server
  refuses: the form never decides there; `onevision approve` with a reviewer's account does.
* ``registry`` (default embedded): the flow ends and the candidate waits as
  `challenger` with status ``awaiting-approval``.

Either way ``onevision approve|reject VERSION --reason TEXT`` decides from the
reviewer's own shell (identity: ``$ONEVISION_REVIEWER``, else the login); it
also resumes a paused run, which then finds the decision made and ends.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.settings import get_current_settings
from prefect.states import Completed
from pydantic import Field

from onevision.project import Project
from onevision.promotion.workflow import authorize_reviewer
from onevision.registry.model_registry import AWAITING, PromotionError
from tasks.promote import apply_decision, check_gates, register_candidate


class ReviewDecision(RunInput):
    """The reviewer's form: who, approve or reject, and why."""

    reviewer: str = Field(min_length=1, description="Your name, as listed in registry.reviewers.")
    decision: Literal["approve", "reject"] = Field(description="approve: becomes champion; reject: the champion stays.")
    reason: str = Field(min_length=1, description="Why (kept in the audit log).")


def approval_mode(configured: str) -> str:
    """`auto` -> `pause` when this process talks to a Prefect server, else `registry`."""
    if configured != "auto":
        return configured

    return "pause" if get_current_settings().api.url else "registry"


@flow(name="promotion", log_prints=True)
def promotion(root: str = ".", approval: Literal["auto", "pause", "registry"] | None = None, parent_run_id: str | None = None) -> dict:
    """Register the project's model as `challenger`, check the gates and wait for a reviewer's decision."""
    logger = get_run_logger()
    project = Project.open(root)
    mode = approval_mode(approval or project.cfg.registry.approval)
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    channel = "prefect-pause" if mode == "pause" else "registry"
    candidate = register_candidate(project, parent_run_id, flow_run_id, channel)
    version = candidate["version"]
    report = check_gates(project, version)
    outcome = {"version": version, "gates_passed": report["passed"], "run_id": candidate["run_id"]}
    if not report["passed"]:
        failed = [g["name"] for g in report["gates"] if not g["passed"]]
        logger.warning("version %s failed gates %s: challenger alias removed, not eligible for approval (report: reports/gate_report.md)", version, failed)
        result = {**outcome, "status": "gates-failed", "failed_gates": failed}
        # The run's state says so ("GatesFailed"); Completed, not Failed: the platform worked, the candidate did not pass.
        return Completed(name="GatesFailed", message=f"version {version} failed gates {', '.join(failed)}", data=result)
    if mode == "registry":
        logger.info("version %s passed every gate and waits as challenger: onevision approve %s --reason TEXT", version, version)
        return {**outcome, "status": AWAITING}
    return {**outcome, **wait_for_review(project, version)}


def wait_for_review(project: Project, version: str) -> dict:
    """Pause until a listed reviewer decides (form or CLI); refused reviewers pause the run again."""
    logger = get_run_logger()
    cfg, registry = project.cfg, project.candidates()  # the candidate's status (the served model when not separate)
    description = (
        f"Gate report of {cfg.registry.candidates} version {version}: reports/gate_report.md in {project.root}, "
        f"or the version's description in the MLflow UI. Reviewers: {', '.join(cfg.registry.reviewers) or '(none configured)'}."
    )
    timeout = int(cfg.registry.approval_timeout_hours * 3600)
    while True:
        try:
            review = pause_flow_run(
                wait_for_input=ReviewDecision.with_initial_data(description=description),
                timeout=timeout,
                poll_interval=cfg.registry.approval_poll_s,
            )
        except FlowPauseTimeout:
            logger.warning("no decision within %.0f h: version %s still waits as challenger (onevision approve)", cfg.registry.approval_timeout_hours, version)
            return {"status": registry.status(registry.version(version))}
        status = registry.status(registry.version(version))
        if status != AWAITING:  # decided meanwhile (onevision approve/reject, which also resumed this run)
            logger.info("version %s was decided outside this run: status %s", version, status)
            return {"status": status}
        if cfg.registry.form_decisions == "refuse":
            logger.warning("a decision typed into the form is not accepted (registry.form_decisions: refuse; the Prefect UI "
                           "does not say who typed it): decide with `onevision %s %s --reason ...` in your own shell, "
                           "which resumes this run; still waiting", review.decision, version)
            continue
        try:
            authorize_reviewer(cfg, review.reviewer)
        except PromotionError as exc:
            logger.warning("input refused, still waiting: %s", exc)
            continue
        try:
            record = apply_decision(project, version, review.reviewer, review.decision, review.reason)
        except PromotionError as exc:  # on a server with authentication: the worker's account is not the reviewer's
            logger.warning("form decision refused, still waiting: %s", exc)
            continue
        logger.info("version %s: %s by %s", version, record["action"], record["by"])
        return {"status": registry.status(registry.version(version)), "decision": record["action"], "reviewer": record["by"]}
