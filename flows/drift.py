"""The drift monitor flow: is current query traffic still like the champion's training data?

Scheduled daily by the `drift-daily` deployment in prefect.yaml; run by hand
with `onevision drift` (this same file, loaded the way a worker loads it) or by
calling `drift_monitor()`. One run: check that the champion being monitored
was approved, pick the current window, compare it with the reference (Evidently
HTML + JSON summary under reports/drift/<run_id>/), log an MLflow run in the
`drift.experiment` experiment, upload the files to the object store, attach a
markdown summary to the flow run, POST an alert to `$ONEVISION_DRIFT_WEBHOOK_URL`
(or `drift.webhook_url`) on an alarm. A window too short for a verdict is
reported but not published.

Each outcome has its own final state, so a state means one thing (docs/oncall.md):

* ``Completed`` — no drift; ``Completed`` named ``InsufficientData`` — too few queries, no verdict, nothing published;
* ``Failed`` named ``UnapprovedChampion`` — the champion alias points at a version nobody approved and
  ``registry.unapproved_champion`` is ``refuse``: nothing was checked (with ``warn`` the run goes on and logs it);
* ``Failed`` named ``BadInput`` — the query log or window could not be read (the message names it);
* ``Failed`` named ``Drifted`` — an alarm (``Completed`` named ``Drifted`` with ``drift.fail_on_drift: false``);
* ``Failed`` named ``InfrastructureError`` — the verdict was reached but MLflow or the object store could
  not take the reports after retries with backoff; its message gives the verdict and the local report.
  On a quiet day nothing is sent to the drift webhook.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from onevision.monitoring.alert import AlertError, webhook_url
from onevision.monitoring.publish import describe_error
from onevision.monitoring.summary import STATUS_INSUFFICIENT, summary_markdown
from onevision.project import Project
from tasks.drift import (
    check_champion,
    check_drift,
    load_current_window,
    log_drift_run,
    send_drift_alert,
    upload_drift_reports,
)


@flow(name="drift_monitor", log_prints=True)
def drift_monitor(
    root: str = ".",
    *,
    profile: str | None = None,
    overrides: list[str] | None = None,
    current: str | None = None,
    window: str | None = None,
    simulate_shift: str | None = None,
    drill_rows: int = 2000,
    drill_seed: int | None = None,
    out: str | None = None,
    publish: bool = True,
):
    """Check one window of query traffic for drift; alert and fail on an alarm.

    current: Parquet file or folder of the query log (default: drift.current_path,
    else the held-out test split); window: its latest span, e.g. '24h';
    simulate_shift: run a drill instead (category-mix, lighting, blur, new-brand) of
    drill_rows queries, seeded with drill_seed (default: from the config seed);
    out: folder for the report files (default: reports/drift/<run_id>/);
    publish: log to MLflow, upload to the object store and send the webhook alert.
    """
    logger = get_run_logger()
    project = Project.open(root, profile, overrides or [])
    cfg = project.cfg
    champion = check_champion(project)
    if champion["refused"]:
        return Failed(name="UnapprovedChampion", message=champion["message"])
    if champion["message"]:
        logger.warning("%s", champion["message"])
    try:
        frame, label = load_current_window(project, current=current, window=window, simulate_shift=simulate_shift,
                                           drill_rows=drill_rows, drill_seed=drill_seed)
        summary = check_drift(project, frame, label=label, out_dir=out)
    except (FileNotFoundError, ValueError) as exc:  # the input, not the platform: say what to fix
        return Failed(name="BadInput", message=f"{exc} (fix the query log or window and rerun)")
    infra_errors: list[str] = []
    if publish:
        tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "drill": simulate_shift or ""}
        for what, step, args in (("MLflow", log_drift_run, (tags,)), ("object store", upload_drift_reports, ())):
            try:
                summary = step(project, summary, *args)
            except Exception as exc:  # noqa: BLE001 - after the task's retries: an infrastructure error, not a verdict
                infra_errors.append(f"{what}: {describe_error(exc)}")
                logger.error("drift run %s: %s unavailable after retries: %s", summary["run_id"], what, describe_error(exc))
    alert_error = None
    url = webhook_url(cfg)
    if publish and summary["drift_detected"] and url:
        try:
            send_drift_alert(url, summary, cfg.drift.webhook_timeout_s)
        except AlertError as exc:  # the verdict stands; the failed alert is reported with it
            alert_error = str(exc)
            logger.error("drift alert not delivered: %s", exc)
    create_markdown_artifact(
        markdown=summary_markdown(summary) + (f"\n**Alert not delivered**: {alert_error}\n" if alert_error else ""),
        key="drift-summary",
        description=f"Drift monitor verdict: {summary['status']}",
    )
    logger.info("drift run %s: %s; alarms: %s; report: %s", summary["run_id"], summary["status"],
                ", ".join(summary["alarms"]) or "none", summary["artifacts"].get("report_html"))
    report = summary["artifacts"].get("report_html") or summary["artifacts"].get("summary_md")
    if infra_errors:
        return Failed(name="InfrastructureError", data=summary,
                      message=f"verdict {summary['status']} (report kept at {report}), but {'; '.join(infra_errors)}: "
                      "fix the store or credentials and rerun; this is not a drift alarm")
    if summary["drift_detected"]:
        message = f"drift detected: {', '.join(summary['alarms'])} (report {report})"
        if cfg.drift.fail_on_drift:
            return Failed(name="Drifted", message=message, data=summary)
        return Completed(name="Drifted", message=message, data=summary)
    if summary["status"] == STATUS_INSUFFICIENT:
        return Completed(name="InsufficientData", message=summary.get("message", "too few queries"), data=summary)
    return Completed(message="no drift", data=summary)
