"""Prefect tasks of the promotion flow: thin wrappers over onevision.promotion.workflow."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from onevision.config import PARAMS_FILE, load_config
from onevision.promotion import workflow as promotion


def _cfg(root: str):
    return load_config(Path(root) / PARAMS_FILE)


@task(name="register-candidate", cache_policy=NO_CACHE)
def register_candidate(root: str, parent_run_id: str | None, flow_run_id: str | None, approval_channel: str) -> dict:
    """Bundle the project, log the pyfunc model, register a new version as `challenger`."""
    return asdict(promotion.register_candidate(_cfg(root), root, parent_run_id=parent_run_id, flow_run_id=flow_run_id, approval_channel=approval_channel))


@task(name="check-gates", cache_policy=NO_CACHE)
def check_gates(root: str, version: str) -> dict:
    """Evaluate every gate, tag the version with the values, attach the gate report."""
    return promotion.check_gates(_cfg(root), root, version).to_dict()


@task(name="apply-decision", cache_policy=NO_CACHE)
def apply_decision(root: str, version: str, reviewer: str, decision: str, reason: str) -> dict:
    """Approve (move `champion`) or reject the candidate; returns the audit record."""
    return promotion.decide(_cfg(root), root, version=version, reviewer=reviewer, decision=decision, reason=reason, identity="prefect-form")
