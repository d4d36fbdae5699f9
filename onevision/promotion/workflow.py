"""Promotion: register a candidate, check its gates, approve or reject it, roll back.

The only code that moves the ``champion`` alias is :func:`_move_champion`,
called by :func:`approve` (after the gates passed and a listed reviewer said
yes) and :func:`rollback`. Every decision appends an audit record (who, when,
why, gate values) to the registered model; ``onevision audit`` prints them.

Lifecycle of a version (its ``status`` tag)::

    registered -> gates-failed                      (challenger alias removed)
               -> awaiting-approval (challenger) -> champion -> previous-champion -> retired
                                                 -> rejected             \\-> rolled-back
                                                 -> superseded (a newer candidate arrived)

No Prefect here: the promotion flow (flows/promote.py, which `onevision promote`
runs) and the CLI's approve/reject/rollback call these functions.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow

from onevision import atomic, paths
from onevision.config import Config
from onevision.project import Project
from onevision.promotion.gates import GateReport, candidate_metrics, collect_gate_inputs, evaluate_gates, resolved_gates
from onevision.promotion.identity import (  # noqa: F401 - re-exported: the command line and flows import them from here
    REVIEWER_ENV,
    REVIEWER_REMEDY,
    SERVER_IDENTITY,
    SERVICE_REMEDY,
    ReviewerNotAllowed,
    check_authenticated,
    current_identity,
    reviewer_identity,
)
from onevision.promotion.notify import notify
from onevision.promotion.report import markdown_report, plot_report
from onevision.promotion.sheet import candidate_sheet
from onevision.registry.access import denied_as_error, server_identity
from onevision.registry.model_registry import (
    APPROVED,
    AWAITING,
    CHALLENGER,
    CHAMPION,
    GATES_FAILED,
    METRICS_TAG,
    PREVIOUS,
    REGISTERED,
    REJECTED,
    RETIRED,
    ROLLED_BACK,
    STATUS_CHAMPION,
    STATUS_PREVIOUS,
    SUPERSEDED,
    ChampionCheck,
    ModelRegistry,
    PromotionError,
    now_iso,
    scoped_tracking_uri,
    verify_champion,
    version_fingerprint,
    version_id,
)
from onevision.serving.bundle import build_bundle
from onevision.serving.pyfunc import log_bundle_model
from onevision.tracking import (
    artifact_errors,
    git_revision,
    metric_key,
)

log = logging.getLogger(__name__)

GATE_REPORT = paths.REPORTS / "gate_report.md"
GATE_PLOT = paths.PLOTS / "gate_report.png"


@dataclass
class Candidate:
    version: str
    run_id: str
    model_uri: str


def decider_identity(project: Project, claimed: str | None = None) -> tuple[str, str]:
    """Who decides: the account the MLflow server authenticated when it has authentication, else
    :func:`current_identity` (embedded: one-person, nothing to authenticate against)."""
    return reviewer_identity(claimed, server_identity(project.tracking_uri))


# --------------------------------------------------------------------------- register


def register_candidate(
    project: Project, *, parent_run_id: str | None = None, flow_run_id: str | None = None, approval_channel: str = "registry"
) -> Candidate:
    """Bundle the project, log it as a pyfunc model and register it as a new version with alias ``challenger``.

    A still-undecided older challenger is marked ``superseded`` (it can no longer be approved).
    """

    cfg, root = project.cfg, project.root
    # log_model/register_model are fluent APIs: point them at this project's store.
    with scoped_tracking_uri(project.tracking_uri):
        tracker = project.tracker()
        registry = project.candidates()
        tags = {"stage": "promotion", "git_revision": git_revision(root), "profile": cfg.profile}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = tracker.client.create_run(tracker.experiment_id, run_name="promotion", tags=tags).info.run_id
        try:
            with tempfile.TemporaryDirectory(prefix="onevision-bundle-") as tmp:
                bundle = build_bundle(cfg, root, Path(tmp) / "bundle")
                with mlflow.start_run(run_id=run_id), artifact_errors("the model", lambda: tracker.artifact_uri(run_id)):
                    info = log_bundle_model(bundle)
            with denied_as_error(user=os.environ.get("MLFLOW_TRACKING_USERNAME"), action="registering a candidate",
                                 model=registry.name, needed="EDIT", remedy=SERVICE_REMEDY):
                registry.ensure_model()
                mv = mlflow.register_model(info.model_uri, registry.name, tags={"status": REGISTERED})
        except BaseException:
            tracker.finish(run_id, "FAILED")
            raise
    version = str(mv.version)
    registry.set_tags(version, {
        "run_id": run_id,
        "source.root": str(root),
        "source.git_revision": tags["git_revision"],
        "source.profile": cfg.profile,
        "retriever": cfg.serving.retriever,
        "approval_channel": approval_channel,
        **({"prefect.flow_run_id": flow_run_id} if flow_run_id else {}),
    })
    with registry.decision_lock():  # an approval of the older challenger either finishes first or finds it superseded
        old = registry.by_alias(CHALLENGER)
        if old is not None and version_id(old) != version and registry.status(old) == AWAITING:
            registry.set_status(version_id(old), SUPERSEDED)
        registry.set_alias(CHALLENGER, version)
    log.info("registered %s version %s (run %s): %s while its gates are checked", registry.name, version, run_id, CHALLENGER)
    return Candidate(version, run_id, info.model_uri)


# --------------------------------------------------------------------------- gates


def check_gates(project: Project, version: str) -> GateReport:
    """Evaluate the gates for ``version``, record values as version tags, attach the report; failing -> gates-failed."""
    cfg, root = project.cfg, project.root
    registry, served = project.candidates(), project.registry()
    mv = registry.version(version)
    if registry.status(mv) != REGISTERED:
        raise PromotionError(f"version {version} was already gated (status: {registry.status(mv)})")
    champion = served.by_alias(CHAMPION)
    inputs = collect_gate_inputs(cfg, root, registry.metrics_of(champion) if champion else None, version_id(champion))
    gates = resolved_gates(cfg.registry.gates, inputs)  # "orders": simulated or logged, whichever this project measures
    report = evaluate_gates(inputs, gates)

    plot = plot_report(root / GATE_PLOT, inputs, gates, report)
    text = markdown_report(registry.name, version, report=report, inputs=inputs, gates=gates, plot_name=f"gate_report/{plot.name}")
    atomic.write_text(root / GATE_REPORT, text)
    atomic.write_json(root / GATE_REPORT.with_suffix(".json"), report.to_dict(), sort_keys=False)
    run_id = mv.tags.get("run_id") or mv.run_id
    sheet = root / paths.REPORTS / "evaluate.html"  # photos of queries and results (stage evaluate)
    attached = [root / GATE_REPORT, root / GATE_REPORT.with_suffix(".json"), plot] + ([sheet] if sheet.exists() else [])
    try:  # the same queries answered by the candidate, the champion (run now) and MCA
        names = {gates.candidate_system: inputs.candidate, f"champion v{inputs.champion_version}": inputs.champion, gates.baseline_system: inputs.baseline}
        candidate = candidate_sheet(root, served.name, version=version, champion_version=inputs.champion_version, tracking_uri=registry.tracking_uri,
                                    candidate_system=gates.candidate_system, baseline_system=gates.baseline_system,
                                    metrics={k: v for k, v in names.items() if v})
        if candidate is not None:
            attached.append(candidate)
    except Exception:  # noqa: BLE001 - a picture never blocks the gates
        log.exception("the candidate page could not be written (the gate report is complete)")

    for path in attached:
        with artifact_errors(path.name):
            registry.client.log_artifact(run_id, str(path), "gate_report")

    tags: dict[str, Any] = {}
    for r in report.results:
        key = f"gate.{metric_key(r.name)}"
        tags[f"{key}.passed"] = str(r.passed).lower()
        tags[f"{key}.value"] = "" if r.value is None else f"{r.value:.6g}"
        if r.threshold is not None:
            tags[f"{key}.threshold"] = f"{r.threshold:.6g}"
    metrics = candidate_metrics(inputs, gates)
    tags.update({f"metric.{metric_key(k)}": f"{v:.6g}" for k, v in metrics.items()})
    tags[METRICS_TAG] = json.dumps(metrics, sort_keys=True)
    tags["gates.passed"] = str(report.passed).lower()
    tags["gates.failed"] = ",".join(r.name for r in report.failed)
    tags["gate_report"] = f"runs:/{run_id}/gate_report/{GATE_REPORT.name}"
    registry.set_tags(version, tags)
    registry.client.update_model_version(registry.name, version, description=text)
    if report.passed:
        registry.set_status(version, AWAITING)
    else:
        registry.set_status(version, GATES_FAILED)
        if version_id(registry.by_alias(CHALLENGER)) == str(version):
            registry.delete_alias(CHALLENGER)
        log.warning("version %s failed %d gates: %s", version, len(report.failed), "; ".join(f"{r.name}: {r.reason}" for r in report.failed))
    notify(cfg, "awaiting-approval" if report.passed else "gates-failed", model=registry.name, version=str(version),
           served_model=served.name, run_id=run_id, tracking_uri=registry.tracking_uri, tags=tags,
           failed=[r.name for r in report.failed], attached=[p.name for p in attached])
    return report


# --------------------------------------------------------------------------- decide


def authorize_reviewer(cfg: Config, reviewer: str) -> str:
    reviewer = (reviewer or "").strip()
    if not cfg.registry.reviewers:
        raise ReviewerNotAllowed("no reviewers are configured: list who may approve in registry.reviewers (params.yaml)")
    if reviewer not in cfg.registry.reviewers:
        raise ReviewerNotAllowed(f"'{reviewer}' is not a reviewer (registry.reviewers: {', '.join(cfg.registry.reviewers)})")
    return reviewer


def _awaiting(registry: ModelRegistry, version: str):
    mv = registry.version(version)
    status = registry.status(mv)
    if status != AWAITING or mv.tags.get("gates.passed") != "true":
        hint = " (its gates failed; see its gate report)" if status == GATES_FAILED else ""
        raise PromotionError(f"version {version} is not awaiting approval (status: {status}){hint}")
    return mv


def _gate_values(mv) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mv.tags.items():
        if key.startswith("gate.") and key.endswith(".value"):
            name = key[len("gate."):-len(".value")]
            out[name] = {"value": value, "passed": mv.tags.get(f"gate.{name}.passed") == "true"}
    return out


class UnapprovedChampion(PromotionError):
    """The champion alias points to a version without a matching approval record."""


def enforce_champion(cfg: Config, registry: ModelRegistry, what: str) -> ChampionCheck:
    """``registry.unapproved_champion``: refuse (raise) or warn (log) when the champion is unapproved."""
    check = verify_champion(registry)
    if check.approved:
        return check
    message = (f"{what}: {check.reason}. Only the gates and a reviewer make a champion: `onevision rollback` or "
               f"`onevision approve VERSION` restores an audited one; `onevision audit` shows the decisions")
    if cfg.registry.unapproved_champion == "refuse":
        raise UnapprovedChampion(message)
    log.warning("%s", message)
    return check


def check_registry_champion(project: Project, what: str) -> ChampionCheck | None:
    """:func:`enforce_champion` on the project's registry; None when there is no registry or model to check."""

    try:
        registry = project.registry()
        registry.client.get_registered_model(registry.name)
    except Exception:  # noqa: BLE001 - no registry, or no model registered yet: nothing to check
        return None
    return enforce_champion(project.cfg, registry, what)


def _move_champion(registry: ModelRegistry, version: str) -> str | None:
    """Point ``champion`` at ``version``; the former champion becomes ``previous-champion``. The one place champion moves."""
    version = str(version)
    old, old_previous = version_id(registry.by_alias(CHAMPION)), version_id(registry.by_alias(PREVIOUS))
    if old is not None and old != version:
        registry.set_alias(PREVIOUS, old)
        registry.set_status(old, STATUS_PREVIOUS)
        if old_previous is not None and old_previous not in (old, version):
            registry.set_status(old_previous, RETIRED)
    registry.set_alias(CHAMPION, version)
    registry.set_status(version, STATUS_CHAMPION)
    return old


@contextmanager
def _deciding(project: Project, who: str, identity: str, *, action: str, model: str) -> Iterator[tuple[ModelRegistry, ModelRegistry, str]]:
    """A decision's frame: the served and candidates registries, who decides (the account the server authenticated,
    when it authenticates), one decision at a time (the candidates model's decision lock), and a 403 from the server
    on ``model`` turned into one line for ``who``."""
    registry, candidates = project.registry(), project.candidates()
    if check_authenticated(registry.tracking_uri, who):
        identity = SERVER_IDENTITY
    with candidates.decision_lock(), denied_as_error(user=who, action=action, model=model, needed="EDIT", remedy=REVIEWER_REMEDY):
        yield registry, candidates, identity


def approve(project: Project, *, version: str, reviewer: str, reason: str, identity: str = "login") -> dict[str, Any]:
    """A listed reviewer approves a gated candidate: it becomes champion. Returns the audit record.

    ``identity`` says how the reviewer's name was established (``$ONEVISION_REVIEWER``, ``login``, ``prefect-form``).
    Two decisions never interleave: the second waits for the registry's decision lock, then finds the version decided.
    """
    cfg = project.cfg
    reviewer = authorize_reviewer(cfg, reviewer)
    if not reason.strip():
        raise PromotionError("a reason is required")
    served = cfg.registry.model_name
    with _deciding(project, reviewer, identity, action=f"approving {cfg.registry.candidates} v{version} (champion of '{served}')",
                   model=served) as (registry, candidates, identity):
        record = _approve_locked(registry, str(version), reviewer=reviewer, reason=reason, identity=identity, candidates=candidates)
    notify(cfg, "champion-changed", model=registry.name, version=record["version"], served_model=registry.name,
           tracking_uri=registry.tracking_uri, record=record)
    return record


def _approve_locked(registry: ModelRegistry, version: str, *, reviewer: str, reason: str, identity: str,
                    candidates: ModelRegistry | None = None) -> dict[str, Any]:
    """Approve ``version`` of ``candidates`` (default: the served model itself). With a separate candidates model
    the version is copied into the served model first (a new version there, its source the candidate) and the
    audit record names both; the server refuses the copy (403) to anyone who may not write the served model."""
    candidates = candidates or registry
    mv = _awaiting(candidates, version)
    version = version_id(mv)
    decided = {"decided_by": reviewer, "decided_at": now_iso(), "decision": "approve", "decision_reason": reason}
    copied = None
    if candidates.name != registry.name:
        copied = registry.copy_version(mv)
        served_mv = registry.version(version_id(copied))
    else:
        served_mv = mv
    target = version_id(served_mv)
    previous = _move_champion(registry, target)
    if version_id(candidates.by_alias(CHALLENGER)) == version:
        candidates.delete_alias(CHALLENGER)
    if copied is not None:
        registry.set_tags(target, {**decided, "candidate": f"{candidates.name}/{version}"})
        candidates.set_tags(version, {**decided, "status": APPROVED, "served_as": f"{registry.name}/{target}"})
    else:
        registry.set_tags(version, decided)
    record = {"action": "approve", "version": target, "previous_champion": previous, "by": reviewer, "identity": identity,
              "reason": reason, "gates": _gate_values(mv), "metrics": registry.metrics_of(mv), "model_hash": version_fingerprint(served_mv)}
    if copied is not None:
        record["candidate"] = {"model": candidates.name, "version": version}
    log.info("%s version %s approved by %s: %s v%s is now %s (previous: %s)", candidates.name, version, reviewer, registry.name,
             target, CHAMPION, previous)
    return registry.append_audit(record)


def reject(project: Project, *, version: str, reviewer: str, reason: str, identity: str = "login") -> dict[str, Any]:
    """A listed reviewer rejects a candidate; the champion is untouched. Returns the audit record."""
    cfg = project.cfg
    reviewer = authorize_reviewer(cfg, reviewer)
    if not reason.strip():
        raise PromotionError("a reason is required")
    with _deciding(project, reviewer, identity, action=f"rejecting {cfg.registry.candidates} v{version}",
                   model=cfg.registry.candidates) as (registry, candidates, identity):
        return _reject_locked(registry, str(version), reviewer=reviewer, reason=reason, identity=identity, candidates=candidates)


def _reject_locked(registry: ModelRegistry, version: str, *, reviewer: str, reason: str, identity: str,
                   candidates: ModelRegistry | None = None) -> dict[str, Any]:
    candidates = candidates or registry
    mv = _awaiting(candidates, version)
    version = version_id(mv)
    candidates.set_status(version, REJECTED)
    if version_id(candidates.by_alias(CHALLENGER)) == version:
        candidates.delete_alias(CHALLENGER)
    candidates.set_tags(version, {"decided_by": reviewer, "decided_at": now_iso(), "decision": "reject", "decision_reason": reason})
    record = {"action": "reject", "version": version, "champion": version_id(registry.by_alias(CHAMPION)), "by": reviewer,
              "identity": identity, "reason": reason, "gates": _gate_values(mv)}
    if candidates.name != registry.name:
        record["candidate"] = {"model": candidates.name, "version": version}
    return registry.append_audit(record)


def decide(project: Project, *, version: str, reviewer: str, decision: Literal["approve", "reject"], reason: str,
           identity: str = "login") -> dict[str, Any]:
    if decision == "approve":
        return approve(project, version=version, reviewer=reviewer, reason=reason, identity=identity)
    if decision == "reject":
        return reject(project, version=version, reviewer=reviewer, reason=reason, identity=identity)
    raise PromotionError(f"decision must be approve or reject, got {decision!r}")


def rollback(project: Project, reason: str, by: str, identity: str = "login") -> dict[str, Any]:
    """Restore ``previous-champion`` as champion in one step; the rolled-back version is marked and the alias cleared."""
    if not reason.strip():
        raise PromotionError("a reason is required")
    served = project.cfg.registry.model_name
    with _deciding(project, by, identity, action=f"rolling back the champion of '{served}'", model=served) as (registry, _, identity):
        record = _rollback_locked(registry, reason, by, identity)
    notify(project.cfg, "rolled-back", model=registry.name, version=record["version"], served_model=registry.name,
           tracking_uri=registry.tracking_uri, record=record)
    return record


def _rollback_locked(registry: ModelRegistry, reason: str, by: str, identity: str = "login") -> dict[str, Any]:
    previous, current = version_id(registry.by_alias(PREVIOUS)), version_id(registry.by_alias(CHAMPION))
    if previous is None:
        raise PromotionError(f"model '{registry.name}' has no {PREVIOUS} to roll back to")
    _move_champion(registry, previous)
    # One step back only: a second rollback must not bring the bad version back.
    registry.delete_alias(PREVIOUS)
    if current is not None and current != previous:
        registry.set_status(current, ROLLED_BACK)
        registry.set_tags(current, {"rolled_back_by": by, "rolled_back_at": now_iso(), "rollback_reason": reason})
    record = {"action": "rollback", "version": previous, "rolled_back": current, "by": by, "reason": reason,
              "identity": identity,
              "model_hash": version_fingerprint(registry.version(previous))}
    log.warning("rollback by %s: champion %s -> %s (%s)", by, current, previous, reason)
    return registry.append_audit(record)


def summary(registry: ModelRegistry) -> list[dict[str, Any]]:
    """One row per version: aliases, status, gates, decision (for `onevision models`); an unapproved champion
    is flagged in its aliases."""
    rows = []
    check = verify_champion(registry)
    for mv in registry.versions():
        aliases = ",".join(sorted(mv.aliases))
        if not check.approved and version_id(mv) == check.version:
            aliases += " UNAPPROVED"
        rows.append({
            "version": version_id(mv),
            "aliases": aliases,
            "status": registry.status(mv),
            "gates": {"true": "passed", "false": "failed"}.get(mv.tags.get("gates.passed", ""), "–"),
            "decided_by": mv.tags.get("decided_by", ""),
            "created": mv.creation_timestamp,
        })
    return rows
