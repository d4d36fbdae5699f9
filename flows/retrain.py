"""The retrain flow: every pipeline stage in order, one MLflow parent run.

Run it with `onevision retrain` (embedded Prefect + SQLite MLflow), or deploy
it from prefect.yaml onto a work pool. Stages are executed by DVC, so a rerun
with nothing changed skips them, and `dvc repro` alone reproduces the same
outputs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.promote import promotion
from onevision.pipeline import stages_until, write_run_params
from onevision.project import Project
from onevision.stagegraph import sync_dvc_yaml
from onevision.tracking import dvc_lock_hashes, git_revision
from tasks.stages import push_outputs, run_stage


@flow(name="retrain", log_prints=True)
def retrain(
    root: str = ".",
    *,
    profile: str | None = None,
    overrides: list[str] | None = None,
    until: str | None = None,
    promote: bool = False,
    reset: bool = False,
    replace_trained: bool = False,
    push: bool = False,
) -> list[dict]:
    """Retrain OneVision: prepare → validate → split → … up to `until`.

    overrides are added to those recorded in params.yaml; reset drops the recorded ones first.
    replace_trained: allow a switch of profile or data.source while models/ holds trained models.
    push: afterwards `dvc push` the outputs to the project's default DVC remote (an S3 bucket on a shared stack).

    promote: then run the promotion flow (register, gates, reviewer); opt-in, it needs
    the stages through `evaluate` and a trained model (flows/promote.py).
    """
    logger = get_run_logger()
    root_path = Path(root).resolve()
    changes = write_run_params(root_path, profile, overrides or [], reset=reset, replace_trained=replace_trained)
    for key, (old, new) in changes.items():
        logger.info("params.yaml: %s %r -> %r", key, old, new)
    project = Project.open(root_path)  # after params.yaml holds this run's profile and overrides
    cfg = project.cfg
    if sync_dvc_yaml(root_path, cfg):  # e.g. a catalog import: its CSVs and photos become deps of prepare
        logger.info("dvc.yaml: generated deps rewritten for this configuration")
    stages = stages_until(until)
    tracker = project.tracker()
    tags = {
        "git_revision": git_revision(root_path),
        "profile": cfg.profile,
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "stages": ",".join(stages),
    }
    parent_id = tracker.start_parent(f"retrain-{cfg.profile}", tags, {"seed": cfg.seed, "profile": cfg.profile})
    logger.info("MLflow parent run %s (experiment %s, %s)", parent_id, cfg.tracking.experiment, tracker.uri)
    outcomes: list[dict] = []
    try:
        for stage in stages:
            outcomes.append(run_stage(str(root_path), stage, cfg.tracking.experiment, tracker.uri, parent_id))
    except BaseException:
        tracker.finish(parent_id, "FAILED")
        raise
    for stage, digest in dvc_lock_hashes(root_path).items():
        tracker.set_tags(parent_id, {f"dvc.{stage}.deps_hash": digest})
    ran = [o["stage"] for o in outcomes if not o["skipped"]]
    skipped = [o["stage"] for o in outcomes if o["skipped"]]
    tracker.set_tags(parent_id, {"stages_ran": ",".join(ran), "stages_skipped": ",".join(skipped)})
    tracker.log_metrics(parent_id, {f"{o['stage']}.wall_seconds": o["seconds"] for o in outcomes})
    if push:
        try:
            pushed = push_outputs(str(root_path))
        except BaseException:
            tracker.finish(parent_id, "FAILED")
            raise
        tracker.set_tags(parent_id, {"dvc.remote": pushed["remote"], "dvc.remote_url": pushed["url"]})
        tracker.log_metrics(parent_id, {"dvc_push.wall_seconds": pushed["seconds"]})
    tracker.finish(parent_id)
    for o in outcomes:
        logger.info("%-16s %-8s %6.1f s", o["stage"], "skipped" if o["skipped"] else "ran", o["seconds"])
    if promote:
        result = promotion(root=str(root_path), parent_run_id=parent_id)
        logger.info("promotion: version %s, gates %s, status %s", result["version"], "passed" if result["gates_passed"] else "failed", result["status"])
    return outcomes
