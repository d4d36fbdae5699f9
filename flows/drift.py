"""The drift monitor flow: is current query traffic still like the champion's training data?

Scheduled daily by the `drift-daily` deployment in prefect.yaml; run by hand
with `onevision drift` (same library code, no Prefect) or by calling
`drift_monitor()`. One run: pick the current window, compare it with the
reference (Evidently HTML + JSON summary under reports/drift/<run_id>/), log an
MLflow run in the `drift.experiment` experiment, upload the files to the object
store, attach a markdown summary to the flow run, POST an alert to
`drift.webhook_url` on an alarm, and end Failed (Prefect automations and
notifications fire on it) — or Completed named "Drifted" with
`drift.fail_on_drift: false`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from onevision.config import PARAMS_FILE, load_config
from onevision.monitoring.monitor import AlertError, summary_markdown
from tasks.drift import check_drift, load_current_window, log_drift_run, send_drift_alert, upload_drift_reports


@flow(name="drift_monitor", log_prints=True)
def drift_monitor(
    root: str = ".",
    profile: str | None = None,
    overrides: list[str] | None = None,
    current: str | None = None,
    window: str | None = None,
    simulate_shift: str | None = None,
    drill_rows: int = 2000,
    publish: bool = True,
):
    """Check one window of query traffic for drift; alert and fail on an alarm.

    current: Parquet file or folder of the query log (default: drift.current_path,
    else the held-out test split); window: its latest span, e.g. '24h';
    simulate_shift: run a drill instead (category-mix, lighting, blur, new-brand);
    publish: log to MLflow and the object store.
    """
    logger = get_run_logger()
    root_path = str(Path(root).resolve())
    cfg = load_config(Path(root_path) / PARAMS_FILE, profile=profile, overrides=overrides or [])
    frame, label = load_current_window(root_path, profile, overrides, current, window, simulate_shift, drill_rows)
    summary = check_drift(root_path, profile, overrides, frame, label)
    if publish:
        tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "drill": simulate_shift or ""}
        summary = log_drift_run(root_path, profile, overrides, summary, tags)
        summary = upload_drift_reports(root_path, profile, overrides, summary)
    alert_error = None
    if summary["drift_detected"] and cfg.drift.webhook_url:
        try:
            send_drift_alert(cfg.drift.webhook_url, summary, cfg.drift.webhook_timeout_s)
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
    if summary["drift_detected"]:
        message = f"drift detected: {', '.join(summary['alarms'])} (report {summary['artifacts'].get('report_html')})"
        if cfg.drift.fail_on_drift:
            return Failed(message=message, data=summary)
        return Completed(name="Drifted", message=message, data=summary)
    return summary
