"""One Prefect task per pipeline stage run: DVC decides, MLflow records."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from onevision.pipeline import execute_stage
from onevision.pipeline import push_outputs as dvc_push
from onevision.tracking import Tracker


@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage(root: str, stage: str, experiment: str, tracking_uri: str, parent_run_id: str) -> dict:
    """Run (or skip, when DVC finds it unchanged) one stage; log its nested MLflow run."""
    tracker = Tracker(Path(root), experiment, tracking_uri)
    return asdict(execute_stage(Path(root), stage, tracker, parent_run_id))


@task(name="dvc-push", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def push_outputs(root: str, remote: str | None = None) -> dict:
    """Push the run's DVC outputs to the remote (retried: an object store can be briefly unreachable)."""
    return dvc_push(Path(root), remote)
