"""The MLflow model registry as promotion sees it: versions, aliases, status tags and the audit log.

Promotion state lives in the registry only (any process, any shell reads the
same truth): aliases ``champion``, ``previous-champion`` and ``challenger``,
and per version a ``status`` tag. The audit log is one registered-model tag
per record, ``audit.<UTC timestamp>.<random>`` holding a JSON object, so
records never overwrite each other and sort by time.

Decisions (approve, reject, rollback, a new challenger) hold the registry's
decision lock: a registered model named ``<model>.decision-lock`` that exists
while one decision runs. Creating a registered model is atomic in every MLflow
store (a unique name in SQLite or PostgreSQL), so two reviewers in two shells,
or on two machines against one server, never interleave.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CHAMPION = "champion"
PREVIOUS = "previous-champion"
CHALLENGER = "challenger"

# Values of a version's `status` tag.
AWAITING = "awaiting-approval"
GATES_FAILED = "gates-failed"
REJECTED = "rejected"
STATUS_CHAMPION = "champion"
STATUS_PREVIOUS = "previous-champion"
RETIRED = "retired"
ROLLED_BACK = "rolled-back"
SUPERSEDED = "superseded"
REGISTERED = "registered"  # gates not checked yet
APPROVED = "approved"  # a candidate (registry.candidates_model) copied into the served model as its champion

log = logging.getLogger(__name__)

AUDIT_PREFIX = "audit."
LOCK_SUFFIX = ".decision-lock"
LOCK_STALE_S = 300.0  # a lock older than this was left by a crashed decision (one takes seconds)
METRICS_TAG = "metrics"  # JSON {metric name: value} of the gated metrics


class PromotionError(RuntimeError):
    """A registry action was refused; the message says why and what to do."""


@contextmanager
def scoped_tracking_uri(uri: str | None = None) -> Iterator[None]:
    """Use ``uri`` as MLflow's global tracking/registry URI inside the block, then put the previous one back.

    ``mlflow.set_tracking_uri`` changes a process-global and exports $MLFLOW_TRACKING_URI, which ``tracking_uri()``
    prefers: without this, one project's registry would leak into the next
    command or test in the same process.
    """
    # lazy: mlflow on the first registry call; the command line imports this module for its constants
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous_env, previous = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    try:
        if uri is not None:
            mlflow.set_tracking_uri(uri)
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def version_id(mv) -> str | None:
    """A ModelVersion's number as a string (stores return int or str), None for no version."""
    return None if mv is None else str(mv.version)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ModelRegistry:
    """One registered model (``registry.model_name``) through an MlflowClient."""

    def __init__(self, name: str, tracking_uri: str):
        # lazy: mlflow when a registry is opened; the command line imports this module for its constants
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.mlflow_error = MlflowException  # what the methods catch (they need no import of their own)
        self.name = name
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ------------------------------------------------------------------ model and versions
    def ensure_model(self) -> None:
        try:
            self.client.get_registered_model(self.name)
        except self.mlflow_error:
            self.client.create_registered_model(self.name, description="OneVision generative vision search; promotion by aliases.")

    def version(self, version: str | int):
        try:
            return self.client.get_model_version(self.name, str(version))
        except self.mlflow_error:
            raise PromotionError(f"model '{self.name}' has no version {version}") from None

    def by_alias(self, alias: str):
        """The version an alias points at, or None."""
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except self.mlflow_error:
            return None

    def copy_version(self, mv):
        """A new version of this model whose source is ``models:/<mv.name>/<mv.version>``, with its run, tags and
        description: what ``MlflowClient.copy_model_version`` does, minus its create-the-model-if-missing step (the
        served model is set up by an admin, `onevision access setup`) and with the server's 403 left unwrapped."""
        return self.client.create_model_version(
            self.name, f"models:/{mv.name}/{mv.version}", run_id=mv.run_id, tags=dict(mv.tags), run_link=mv.run_link,
            description=mv.description, model_id=getattr(mv, "model_id", None))

    def versions(self) -> list:
        """Every version, newest first, with aliases (search_model_versions leaves them empty)."""
        found = self.client.search_model_versions(f"name='{self.name}'")
        return sorted((self.version(v.version) for v in found), key=lambda v: int(v.version), reverse=True)

    def aliases(self) -> dict[str, str]:
        found = {alias: version_id(self.by_alias(alias)) for alias in (CHAMPION, PREVIOUS, CHALLENGER)}
        return {alias: v for alias, v in found.items() if v is not None}

    # ------------------------------------------------------------------ aliases and tags
    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        if self.by_alias(alias) is not None:
            self.client.delete_registered_model_alias(self.name, alias)

    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, str(value))

    def set_status(self, version: str, status: str) -> None:
        self.set_tags(version, {"status": status})

    @staticmethod
    def status(mv) -> str:
        return mv.tags.get("status", REGISTERED)

    @staticmethod
    def metrics_of(mv) -> dict[str, float] | None:
        raw = mv.tags.get(METRICS_TAG)
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------------ decision lock
    @contextmanager
    def decision_lock(self, timeout_s: float = 60.0) -> Iterator[None]:
        """Hold the registry's decision lock inside the block (waits up to ``timeout_s``; a stale lock is broken)."""
        name = f"{self.name}{LOCK_SUFFIX}"
        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client.create_registered_model(
                    name, tags={"holder": holder, "since": f"{time.time():.3f}"},
                    description=f"Lock of '{self.name}': a promotion decision is in progress (deleted when it ends).")
                break
            except self.mlflow_error as exc:
                # RESOURCE_DOES_NOT_EXIST: MLflow's SQL store answers a name clash by reading the existing lock, and
                # its holder released it in between (seen in CI in a four-way race): contended like a clash, try again
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    raise
            held = self._lock_tags(name)
            if held is not None and time.time() - float(held.get("since") or 0) > LOCK_STALE_S:
                log.warning("breaking a stale decision lock of '%s' held by %s since %s", self.name, held.get("holder"), held.get("since"))
                self._release(name, held.get("holder"))
                continue
            if time.monotonic() > deadline:
                who = held.get("holder", "?") if held else "?"
                raise PromotionError(f"another promotion decision on '{self.name}' is in progress ({who}); try again in a minute")
            time.sleep(0.1 + random.random() * 0.2)
        try:
            yield
        finally:
            self._release(name, holder)

    def _lock_tags(self, name: str) -> dict[str, str] | None:
        try:
            return dict(self.client.get_registered_model(name).tags)
        except self.mlflow_error:
            return None  # released meanwhile

    def _release(self, name: str, holder: str | None) -> None:
        held = self._lock_tags(name)
        if held is None or held.get("holder") != holder:
            return  # not ours (broken as stale and taken by another decision)
        try:
            self.client.delete_registered_model(name)
        except self.mlflow_error:
            pass  # already gone

    # ------------------------------------------------------------------ audit log
    def append_audit(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"at": now_iso(), **record}
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 1_000_000_000:09d}"
        self.client.set_registered_model_tag(self.name, f"{AUDIT_PREFIX}{stamp}.{secrets.token_hex(3)}", json.dumps(record, sort_keys=True, default=str))
        return record

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first."""
        try:
            tags = self.client.get_registered_model(self.name).tags
        except self.mlflow_error:
            return []
        return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(AUDIT_PREFIX))]


# --------------------------------------------------------------------------- the champion check


def version_fingerprint(mv) -> str:
    """A digest of what a model version is (name, number, artifact source, run, creation time): an approval
    record names it, so a record cannot be reused for another version, nor survive a re-registration."""

    blob = "|".join(str(x) for x in (mv.name, mv.version, mv.source, mv.run_id, mv.creation_timestamp))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class ChampionCheck:
    """Whether the ``champion`` alias was set by the gate-and-approval path (or an audited rollback)."""

    version: str | None
    approved: bool
    reason: str
    record: dict[str, Any] | None = None


def verify_champion(registry: ModelRegistry) -> ChampionCheck:
    """The champion must be the version of the latest audited move of the alias (approve or rollback), with
    that record's fingerprint. Setting the alias any other way (the MLflow UI's "Aliases: Add", the plain
    API) leaves no such record, and is caught here."""
    mv = registry.by_alias(CHAMPION)
    if mv is None:
        return ChampionCheck(None, True, "no champion")
    version = version_id(mv)
    moves = [r for r in registry.audit_log() if r.get("action") in ("approve", "rollback")]
    if not moves:
        return ChampionCheck(version, False, f"champion v{version} has no approval record in the audit log: the alias was set outside `onevision approve`")
    last = moves[-1]
    if str(last.get("version")) != version:
        return ChampionCheck(version, False, f"champion v{version} is not the version of the last audited decision "
                             f"({last.get('action')} of v{last.get('version')} by {last.get('by')} at {last.get('at')}): "
                             "the alias was moved outside `onevision approve` / `rollback`", last)
    if last.get("model_hash") != version_fingerprint(mv):
        return ChampionCheck(version, False, f"champion v{version}'s approval record does not name this version's fingerprint "
                             "(recorded before fingerprints, or not for this version)", last)
    return ChampionCheck(version, True, f"approved: {last.get('action')} by {last.get('by')} at {last.get('at')}", last)
