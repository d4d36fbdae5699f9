"""Publishing a drift run: one MLflow run with the report files, and a copy in the object store.

Both rewrite the run's ``summary.json`` / ``summary.md`` so that the stored summary names where it is stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onevision.config import Config
from onevision.monitoring.summary import STATUS_DRIFT, summary_markdown
from onevision.project import Project
from onevision.storage.s3 import ObjectStore, describe_store_error
from onevision.tracking import describe_tracking_error, git_revision


def _report_files(summary: dict[str, Any]) -> list[Path]:
    arts = summary.get("artifacts", {})
    keys = ("report_html", "summary_json", "summary_md", "evidently_json")
    return [Path(arts[k]) for k in keys if arts.get(k) and Path(arts[k]).exists()]


def _rewrite_summary(summary: dict[str, Any]) -> None:
    arts = summary.get("artifacts", {})
    if arts.get("summary_json"):
        Path(arts["summary_json"]).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        Path(arts["summary_md"]).write_text(summary_markdown(summary))


def log_to_mlflow(project: Project, summary: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """One MLflow run in ``drift.experiment``: thresholds as params, scores as metrics, report files as artifacts."""

    cfg = project.cfg
    tracker = project.tracker(cfg.drift.experiment)
    run_tags = {
        "status": summary["status"],
        "drift_detected": str(summary["drift_detected"]).lower(),
        "alarms": ",".join(summary["alarms"]),
        "current": summary["current"]["label"][:500],
        "git_revision": git_revision(project.root),
        **(tags or {}),
    }
    run_id = tracker.start_parent(f"drift-{summary['run_id']}", run_tags, {"drift": cfg.section("drift"), "profile": cfg.profile})
    metrics: dict[str, Any] = {"drift_detected": float(summary["drift_detected"]), "current_rows": summary["current"]["rows"]}
    for name, check in summary.get("checks", {}).items():
        if check["score"] is not None:
            metrics[f"{name}.score"] = check["score"]
            metrics[f"{name}.alarm"] = float(check["status"] == STATUS_DRIFT)
    metrics.update({f"timing.{k}": v for k, v in summary.get("timing", {}).items()})
    tracker.log_metrics(run_id, metrics)
    summary.setdefault("artifacts", {}).update(mlflow_run_id=run_id, mlflow_experiment=cfg.drift.experiment)
    _rewrite_summary(summary)
    for path in _report_files(summary):
        tracker.log_artifact(run_id, path, "drift")
    tracker.finish(run_id)
    return run_id


def upload_reports(cfg: Config, summary: dict[str, Any]) -> list[str]:
    """Upload the run's files to ``storage`` (``<prefix>/drift/<run_id>/``); [] when no bucket is configured."""

    store = ObjectStore.from_config(cfg.storage)
    if store is None:
        return []
    files = _report_files(summary)
    summary.setdefault("artifacts", {})["s3"] = [store.uri(f"drift/{summary['run_id']}/{p.name}") for p in files]
    _rewrite_summary(summary)  # the stored summary names where it is stored
    client = store.client()
    return [store.upload_file(p, f"drift/{summary['run_id']}/{p.name}", client) for p in _report_files(summary)]


def describe_error(exc: BaseException) -> str:
    """One line for an infrastructure failure: what happened, in the library's words, and its kind."""
    clear = describe_store_error(exc) or describe_tracking_error(exc)
    text = clear or " ".join(str(exc).split()) or "no message"
    return f"{text} ({type(exc).__name__})"
