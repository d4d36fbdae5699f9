"""Prefect tasks of the drift monitor: thin wrappers over onevision.monitoring (check, publish, alert).

The rules every run keeps, whether a schedule or `onevision drift` started it (both run flows/drift.py):
the champion being monitored must be one the gates and a reviewer made (:func:`check_champion`), and a
window too short for a verdict is reported, not published (:func:`log_drift_run`, :func:`upload_drift_reports`).
They take the flow's :class:`~onevision.project.Project` (opened once by the flow); no task caches its result
(``NO_CACHE``), so the project is never hashed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from onevision.monitoring import alert, publish
from onevision.monitoring.check import current_traffic, run_drift_check
from onevision.monitoring.summary import STATUS_INSUFFICIENT
from onevision.project import Project
from onevision.promotion.workflow import UnapprovedChampion, check_registry_champion


@task(name="drift-champion-check", cache_policy=NO_CACHE)
def check_champion(project: Project) -> dict:
    """Is the registry's champion one that the gates and a reviewer made? ``registry.unapproved_champion``:
    ``refuse`` -> ``refused`` (the run stops), ``warn`` -> ``warning`` (the run goes on); no registry or no
    registered model yet: nothing to check."""
    try:
        check = check_registry_champion(project, "drift monitor")
    except UnapprovedChampion as exc:
        return {"refused": True, "message": str(exc)}
    if check is None or check.approved:
        return {"refused": False, "message": None}
    return {"refused": False, "message": f"drift monitor: {check.reason} (registry.unapproved_champion: warn; checking anyway)"}


@task(name="drift-current-window", cache_policy=NO_CACHE)
def load_current_window(
    project: Project,
    *,
    current: str | None,
    window: str | None,
    simulate_shift: str | None,
    drill_rows: int,
    drill_seed: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """The traffic to check: a log file, the held-out split, or a drill window."""
    return current_traffic(project.cfg, project.root, current_path=current, window=window, simulate_shift=simulate_shift,
                           drill_rows=drill_rows, drill_seed=drill_seed)


@task(name="drift-check", cache_policy=NO_CACHE)
def check_drift(project: Project, frame: pd.DataFrame, *, label: str, out_dir: str | None = None) -> dict:
    """Features, Evidently report and verdict; writes reports/drift/<run_id>/ (or ``out_dir``)."""
    return run_drift_check(project.cfg, project.root, current=frame, current_label=label, out_dir=Path(out_dir) if out_dir else None)


def has_verdict(summary: dict) -> bool:
    """False for a window too short for a verdict: nothing is published for it (the summary stays local)."""
    return summary["status"] != STATUS_INSUFFICIENT


# Infrastructure steps retry with exponential backoff (2, 4, 8 s, jittered) before the flow reports an infrastructure error.
BACKOFF = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.5}


@task(name="drift-mlflow", cache_policy=NO_CACHE, **BACKOFF)
def log_drift_run(project: Project, summary: dict, tags: dict[str, str]) -> dict:
    """One MLflow run in the drift experiment with the report files as artifacts (none without a verdict)."""
    if not has_verdict(summary):
        return summary
    publish.log_to_mlflow(project, summary, tags)
    return summary


@task(name="drift-upload", cache_policy=NO_CACHE, **BACKOFF)
def upload_drift_reports(project: Project, summary: dict) -> dict:
    """Copy the report files to the configured object store (no-op without storage.bucket or without a verdict)."""
    if not has_verdict(summary):
        return summary
    publish.upload_reports(project.cfg, summary)
    return summary


@task(name="drift-alert", cache_policy=NO_CACHE, **BACKOFF)
def send_drift_alert(url: str, summary: dict, timeout: float) -> int:
    """POST the alarm to the webhook; retried, then the task (not the verdict) fails."""
    return alert.send_alert(url, summary, timeout)
