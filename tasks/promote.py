"""Prefect tasks of the promotion flow: thin wrappers over onevision.promotion.workflow.

They take the flow's :class:`~onevision.project.Project` (opened once by the flow); no task caches its result
(``NO_CACHE``), so the project is never hashed.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NO_CACHE

from onevision.project import Project
from onevision.promotion import workflow as promotion


@task(name="register-candidate", cache_policy=NO_CACHE)
def register_candidate(project: Project, parent_run_id: str | None, flow_run_id: str | None, approval_channel: str) -> dict:
    """Bundle the project, log the pyfunc model, register a new version as `challenger`."""
    return asdict(promotion.register_candidate(project, parent_run_id=parent_run_id, flow_run_id=flow_run_id, approval_channel=approval_channel))


@task(name="check-gates", cache_policy=NO_CACHE)
def check_gates(project: Project, version: str) -> dict:
    """Evaluate every gate, tag the version with the values, attach the gate report."""
    return promotion.check_gates(project, version).to_dict()


@task(name="apply-decision", cache_policy=NO_CACHE)
def apply_decision(project: Project, version: str, reviewer: str, decision: str, reason: str) -> dict:
    """Approve (move `champion`) or reject the candidate; returns the audit record."""
    return promotion.decide(project, version=version, reviewer=reviewer, decision=decision, reason=reason, identity="prefect-form")
