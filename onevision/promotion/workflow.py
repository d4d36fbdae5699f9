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

import getpass
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow

from onevision import atomic, paths
from onevision.config import Config
from onevision.project import Project
from onevision.promotion.gates import GateReport, candidate_metrics, collect_gate_inputs, evaluate_gates, resolved_gates
from onevision.promotion.report import markdown_report, plot_report
from onevision.promotion.sheet import candidate_sheet
from onevision.registry.model_registry import (
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
from onevision.tracking import artifact_errors, git_revision, metric_key

log = logging.getLogger(__name__)

GATE_REPORT = paths.REPORTS / "gate_report.md"
GATE_PLOT = paths.PLOTS / "gate_report.png"


REVIEWER_ENV = "ONEVISION_REVIEWER"


class ReviewerNotAllowed(PromotionError):
    """The named reviewer is not in registry.reviewers, or is not who is deciding."""


def current_identity() -> tuple[str, str]:
    """Who runs this command, and how we know: ``$ONEVISION_REVIEWER`` (set in the reviewer's own shell profile or
    by the SSO wrapper of a shared host), else the operating-system login."""
    name = os.environ.get(REVIEWER_ENV, "").strip()
    if name:
        return name, f"${REVIEWER_ENV}"
    return getpass.getuser(), "login"


def reviewer_identity(claimed: str | None = None) -> tuple[str, str]:
    """The deciding reviewer's name and its source. A name given on the command line must be the caller's own:
    a free-text argument alone never makes anyone a reviewer."""
    name, source = current_identity()
    claimed = (claimed or "").strip()
    if claimed and claimed != name:
        raise ReviewerNotAllowed(
            f"you are '{name}' ({'from ' + source if source != 'login' else 'your login'}), but --reviewer says '{claimed}': "
            f"a reviewer decides only as themselves. Drop --reviewer, or run it in {claimed}'s own shell "
            f"(with {REVIEWER_ENV}={claimed} set there)")
    return name, source


@dataclass
class Candidate:
    version: str
    run_id: str
    model_uri: str


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
        registry = project.registry()
        tags = {"stage": "promotion", "git_revision": git_revision(root), "profile": cfg.profile}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = tracker.client.create_run(tracker.experiment_id, run_name="promotion", tags=tags).info.run_id
        try:
            with tempfile.TemporaryDirectory(prefix="onevision-bundle-") as tmp:
                bundle = build_bundle(cfg, root, Path(tmp) / "bundle")
                with mlflow.start_run(run_id=run_id), artifact_errors("the model", lambda: tracker.artifact_uri(run_id)):
                    info = log_bundle_model(bundle)
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
    registry = project.registry()
    mv = registry.version(version)
    if registry.status(mv) != REGISTERED:
        raise PromotionError(f"version {version} was already gated (status: {registry.status(mv)})")
    champion = registry.by_alias(CHAMPION)
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
        candidate = candidate_sheet(root, registry.name, version=version, champion_version=inputs.champion_version, tracking_uri=registry.tracking_uri,
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


def approve(project: Project, *, version: str, reviewer: str, reason: str, identity: str = "login") -> dict[str, Any]:
    """A listed reviewer approves a gated candidate: it becomes champion. Returns the audit record.

    ``identity`` says how the reviewer's name was established (``$ONEVISION_REVIEWER``, ``login``, ``prefect-form``).
    Two decisions never interleave: the second waits for the registry's decision lock, then finds the version decided.
    """
    reviewer = authorize_reviewer(project.cfg, reviewer)
    if not reason.strip():
        raise PromotionError("a reason is required")
    registry = project.registry()
    with registry.decision_lock():
        return _approve_locked(registry, str(version), reviewer, reason, identity)


def _approve_locked(registry: ModelRegistry, version: str, reviewer: str, reason: str, identity: str) -> dict[str, Any]:
    mv = _awaiting(registry, version)
    version = version_id(mv)
    previous = _move_champion(registry, version)
    if version_id(registry.by_alias(CHALLENGER)) == version:
        registry.delete_alias(CHALLENGER)
    registry.set_tags(version, {"decided_by": reviewer, "decided_at": now_iso(), "decision": "approve", "decision_reason": reason})
    record = {"action": "approve", "version": version, "previous_champion": previous, "by": reviewer, "identity": identity,
              "reason": reason, "gates": _gate_values(mv), "metrics": registry.metrics_of(mv), "model_hash": version_fingerprint(mv)}
    log.info("version %s approved by %s: now %s (previous: %s)", version, reviewer, CHAMPION, previous)
    return registry.append_audit(record)


def reject(project: Project, *, version: str, reviewer: str, reason: str, identity: str = "login") -> dict[str, Any]:
    """A listed reviewer rejects a candidate; the champion is untouched. Returns the audit record."""
    reviewer = authorize_reviewer(project.cfg, reviewer)
    if not reason.strip():
        raise PromotionError("a reason is required")
    registry = project.registry()
    with registry.decision_lock():
        return _reject_locked(registry, str(version), reviewer, reason, identity)


def _reject_locked(registry: ModelRegistry, version: str, reviewer: str, reason: str, identity: str) -> dict[str, Any]:
    mv = _awaiting(registry, version)
    version = version_id(mv)
    registry.set_status(version, REJECTED)
    if version_id(registry.by_alias(CHALLENGER)) == version:
        registry.delete_alias(CHALLENGER)
    registry.set_tags(version, {"decided_by": reviewer, "decided_at": now_iso(), "decision": "reject", "decision_reason": reason})
    record = {"action": "reject", "version": version, "champion": version_id(registry.by_alias(CHAMPION)), "by": reviewer,
              "identity": identity, "reason": reason, "gates": _gate_values(mv)}
    return registry.append_audit(record)


def decide(project: Project, *, version: str, reviewer: str, decision: Literal["approve", "reject"], reason: str,
           identity: str = "login") -> dict[str, Any]:
    if decision == "approve":
        return approve(project, version=version, reviewer=reviewer, reason=reason, identity=identity)
    if decision == "reject":
        return reject(project, version=version, reviewer=reviewer, reason=reason, identity=identity)
    raise PromotionError(f"decision must be approve or reject, got {decision!r}")


def rollback(project: Project, reason: str, by: str) -> dict[str, Any]:
    """Restore ``previous-champion`` as champion in one step; the rolled-back version is marked and the alias cleared."""
    if not reason.strip():
        raise PromotionError("a reason is required")
    registry = project.registry()
    with registry.decision_lock():
        return _rollback_locked(registry, reason, by)


def _rollback_locked(registry: ModelRegistry, reason: str, by: str) -> dict[str, Any]:
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
