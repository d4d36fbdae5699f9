"""Prefect tasks of the drift monitor: thin wrappers over onevision.monitoring.monitor."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from onevision.config import PARAMS_FILE, Config, load_config
from onevision.monitoring import monitor


def _config(root: str, profile: str | None, overrides: list[str] | None) -> Config:
    return load_config(Path(root) / PARAMS_FILE, profile=profile, overrides=overrides or [])


@task(name="drift-current-window", cache_policy=NO_CACHE)
def load_current_window(
    root: str,
    *,
    profile: str | None,
    overrides: list[str] | None,
    current: str | None,
    window: str | None,
    simulate_shift: str | None,
    drill_rows: int,
) -> tuple[pd.DataFrame, str]:
    """The traffic to check: a log file, the held-out split, or a drill window."""
    cfg = _config(root, profile, overrides)
    return monitor.current_traffic(cfg, Path(root), current_path=current, window=window, simulate_shift=simulate_shift, drill_rows=drill_rows)


@task(name="drift-check", cache_policy=NO_CACHE)
def check_drift(root: str, profile: str | None, overrides: list[str] | None, frame: pd.DataFrame, label: str) -> dict:
    """Features, Evidently report and verdict; writes reports/drift/<run_id>/."""
    cfg = _config(root, profile, overrides)
    return monitor.run_drift_check(cfg, Path(root), current=frame, current_label=label)


# Infrastructure steps retry with exponential backoff (2, 4, 8 s, jittered) before the flow reports an infrastructure error.
BACKOFF = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.5}


@task(name="drift-mlflow", cache_policy=NO_CACHE, **BACKOFF)
def log_drift_run(root: str, profile: str | None, overrides: list[str] | None, summary: dict, tags: dict[str, str]) -> dict:
    """One MLflow run in the drift experiment with the report files as artifacts."""
    monitor.log_to_mlflow(_config(root, profile, overrides), Path(root), summary, tags)
    return summary


@task(name="drift-upload", cache_policy=NO_CACHE, **BACKOFF)
def upload_drift_reports(root: str, profile: str | None, overrides: list[str] | None, summary: dict) -> dict:
    """Copy the report files to the configured object store (no-op without storage.bucket)."""
    monitor.upload_reports(_config(root, profile, overrides), summary)
    return summary


@task(name="drift-alert", cache_policy=NO_CACHE, **BACKOFF)
def send_drift_alert(url: str, summary: dict, timeout: float) -> int:
    """POST the alarm to the webhook; retried, then the task (not the verdict) fails."""
    return monitor.send_alert(url, summary, timeout)
