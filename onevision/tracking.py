"""MLflow tracking: one parent run per flow run, one nested run per stage.

Uses ``MlflowClient`` with explicit run ids rather than the fluent API's
active-run stack, so stage runs can be logged from Prefect worker threads.
Tags tie every number to exact code and data: the git revision and the hash
of each stage's dependencies as recorded in ``dvc.lock``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from onevision.redact import redact, secret_values
from onevision.storage.s3 import ENDPOINT_ENV, StoreError, describe_store_error
from onevision.storage.s3 import retry_environment as store_retry_environment

# MLflow's limit on a param value's length.
_MAX_PARAM_LEN = 6000


class ArtifactStoreError(StoreError):
    """MLflow could not write or read an artifact on its store (S3 through MLflow or directly)."""


# A proxying MLflow server returns the store's failure as text inside an HTTP 500: its codes, and what they mean.
_PROXIED_CAUSES = (
    (("NoSuchBucket",), "the artifact bucket does not exist: create it or fix the MLflow artifact root "
                        "(--artifacts-destination / the experiment's artifact location)"),
    (("InvalidAccessKeyId", "SignatureDoesNotMatch"), "the artifact store rejected the credentials (check the AWS_* "
                        "chain of the process that writes: this one, or the MLflow server when it proxies artifacts)"),
    (("EndpointConnectionError", "Could not connect to the endpoint URL"), "the artifact store endpoint is unreachable "
                        "(check MLFLOW_S3_ENDPOINT_URL where MLflow writes)"),
)


@contextmanager
def artifact_errors(what: str, location: Callable[[], str | None] | None = None) -> Iterator[None]:
    """Turn an object-store failure under MLflow into one :class:`ArtifactStoreError` naming the cause and the
    next step (a missing bucket, rejected credentials, an unreachable endpoint); other errors pass unchanged.

    ``location`` is asked for the artifact URI only on failure (it may cost a tracking-server round trip).
    """
    try:
        yield
    except ArtifactStoreError:
        raise
    except Exception as exc:
        uri = location() if location else None
        bucket = uri.removeprefix("s3://").split("/")[0] if uri and uri.startswith("s3://") else None
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get(ENDPOINT_ENV)
        cause = describe_store_error(exc, bucket, endpoint) or next(
            (hint for codes, hint in _PROXIED_CAUSES if any(code in str(exc) for code in codes)), None)
        if cause is None:
            raise
        where = f" ({uri})" if uri else ""
        raise ArtifactStoreError(f"MLflow could not store {what}{where}: {cause}") from None


class TrackingServerError(RuntimeError):
    """The MLflow tracking server did not answer (or kept answering 5xx) after the configured attempts."""


def retry_environment(cfg: Any) -> dict[str, str]:
    """The retry policy of ``cfg`` (``tracking.*``, ``storage.max_attempts``) as the environment variables the
    libraries read themselves: MLflow's HTTP client (``MLFLOW_HTTP_REQUEST_*``: urllib3 retries with exponential
    backoff on connection errors, timeouts, 429 and 5xx) and botocore for the boto3 clients MLflow builds."""
    return {
        **store_retry_environment(cfg.storage.max_attempts),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(cfg.tracking.max_attempts - 1),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(cfg.tracking.backoff_factor),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(cfg.tracking.request_timeout_s),
    }


def apply_retry_environment(env: Mapping[str, str]) -> None:
    """Export ``env`` for this process; a value the operator already exported wins."""
    for key, value in env.items():
        os.environ.setdefault(key, value)


_API_URL = re.compile(r"API request to (\S+?)/api/")


def describe_tracking_error(exc: BaseException) -> str | None:
    """One line naming an unreachable or failing MLflow tracking server and the next step, or None for other errors.

    MLflow raises ``MlflowException("API request to URL failed with exception ...")`` once its retries are spent,
    with the requests error that ended them as the context.
    """
    try:
        # lazy: requests on the first tracking call; the command line imports this module at start
        from requests import exceptions as rex
    except ImportError:  # pragma: no cover - an MLflow dependency
        return None
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    cause = next((e for e in chain if isinstance(e, rex.ConnectionError | rex.Timeout | rex.RetryError)), None)
    if cause is None:
        return None
    text = " ".join(str(e) for e in chain)
    if isinstance(cause, rex.RetryError) or "too many" in text and "error responses" in text:
        reason = "it kept answering with errors (5xx/429)"
    elif isinstance(cause, rex.Timeout) or "timed out" in text.lower():
        reason = "requests timed out"
    elif "refused" in text.lower():
        reason = "connection refused"
    else:
        reason = "connection failed"
    match = _API_URL.search(text)
    server = match.group(1) if match else os.environ.get("MLFLOW_TRACKING_URI", "the MLflow tracking server")
    attempts = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")) + 1
    return (f"the MLflow tracking server {server} is unavailable after {attempts} attempt{'s' * (attempts != 1)} ({reason}; "
            f"tracking.max_attempts / backoff_factor set the retries): check that it is up (curl {server}/health) "
            "and tracking.tracking_uri / $MLFLOW_TRACKING_URI, then rerun")


def tracking_uri(root: Path, configured: str | None = None) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else SQLite in the project root.

    For the embedded store (``mlflow.db`` in the project), the artifact locations it holds are kept inside
    the project: :func:`relocate_local_store` rewrites them after the project was copied or moved.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
    relocate_local_store(root, uri)
    return uri


# Where the embedded store was last used: a copied or moved project finds another path here.
STORE_MARKER = Path(".onevision") / "mlflow-root"
# Columns of MLflow's SQL schema that hold absolute artifact locations (file:// URIs).
_LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"),
              ("model_versions", "storage_location"), ("model_versions", "source"))


def relocate_local_store(root: Path, uri: str) -> bool:
    """Keep a project-local MLflow store pointing into the project it sits in; True when it was rewritten.

    MLflow records absolute ``file://`` artifact locations (experiments, runs, logged models, model
    versions). In a copied or moved project they still name the old folder, so new runs, promotions and
    drift reports would be written there (or fail when it is gone). The store's last root is kept in
    ``.onevision/mlflow-root``; when it differs from the current root, every location under the old root is
    rewritten to the same path under the new one, in one transaction. Stores outside the project (a
    tracking server, another database) are never touched. A store not created yet is marked too: a project
    opens its URI once (:class:`onevision.project.Project`), before its first run may create the store.
    """

    if not uri.startswith("sqlite:///"):
        return False
    db = Path(uri[len("sqlite:///"):])
    root = Path(root).resolve()
    if db.resolve().parent != root:
        return False
    marker = root / STORE_MARKER
    here = root.as_uri()
    old = marker.read_text().strip() if marker.is_file() else None
    if old == here:
        return False
    if not db.is_file():  # nothing to rewrite; the store created from now on belongs to this root
        old = None
    rewritten = 0
    if old:
        with sqlite3.connect(db) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for table, column in _LOCATIONS:
                if table in tables and column in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                    cur = con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                                      (here, len(old) + 1, len(old) + 1, old + "/"))
                    rewritten += cur.rowcount
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(here + "\n")
    tmp.replace(marker)
    if old:
        logging.getLogger(__name__).warning("project moved from %s to %s: %d MLflow artifact locations rewritten to point into it",
                                            old, here, rewritten)
    return bool(rewritten)


def git_revision(root: Path) -> str:
    """HEAD's commit, with '-dirty' when tracked files changed; 'unknown' outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (subprocess.SubprocessError, FileNotFoundError):
        return "unknown"


def dvc_lock_hashes(root: Path) -> dict[str, str]:
    """Per stage: a short hash over the md5s of its deps (and params) in dvc.lock."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    out = {}
    for stage, entry in (data.get("stages") or {}).items():
        deps = {d["path"]: d.get("md5") or d.get("hash") for d in entry.get("deps", [])}
        blob = json.dumps({"deps": deps, "params": entry.get("params", {})}, sort_keys=True, default=str)
        out[stage] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return out


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (for params and metrics)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


# Stage metrics carry per-epoch curves as history.eNN.KEY (nested dicts, flattened).
_HISTORY = re.compile(r"^(?:(?P<prefix>.*)\.)?history\.e(?P<step>\d+)\.(?P<key>.+)$")


def metric_key(name: str) -> str:
    """A metric, param or tag name MLflow accepts (letters, digits, ``_ - . / space :``): ``hr@10`` -> ``hr_at_10``."""
    name = name.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-./ :" else "_" for c in name)


class Tracker:
    """Thin wrapper over MlflowClient for the retrain flow's run tree."""

    def __init__(self, root: Path, experiment: str, uri: str | None = None, retries: Mapping[str, str] | None = None):
        """``uri``: the resolved tracking URI (``Project.tracking_uri``); None resolves it here (:func:`tracking_uri`)."""
        # lazy: mlflow on the first tracking call; the command line imports this module at start
        from mlflow.tracking import MlflowClient

        # MLflow's HTTP client and the boto3 client it builds for s3:// artifact roots read their retry policy
        # from the environment (:func:`retry_environment`; an operator's explicit values win).
        apply_retry_environment(retries or {})
        self.root = Path(root)
        self.uri = uri or tracking_uri(self.root)
        # An explicit client, not mlflow.set_tracking_uri: that would export the URI process-wide.
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifact_root = None
            if self.uri.startswith("sqlite:"):
                artifact_root = (self.root / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_root)
        else:
            self.experiment_id = exp.experiment_id

    def start_parent(self, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_child(self, parent_id: str, stage: str, tags: dict[str, str]) -> str:
        tags = {"mlflow.parentRunId": parent_id, "stage": stage, **tags}
        return self.client.create_run(self.experiment_id, run_name=stage, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        # lazy: mlflow on the first tracking call; the command line imports this module at start
        from mlflow.entities import Param

        flat, values = flatten("", params), secret_values()
        batch = [Param(metric_key(k), redact(str(v), values)[:_MAX_PARAM_LEN]) for k, v in sorted(flat.items())]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        # lazy: mlflow on the first tracking call; the command line imports this module at start
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        flat = flatten("", metrics)
        # Numbers (bools count as 0/1); strings and lists belong in params or artifacts.
        batch = []
        for key, value in sorted(flat.items()):
            if not isinstance(value, (int, float)):
                continue
            curve = _HISTORY.match(key)
            if curve:  # one MLflow curve per KEY, stepped by epoch
                name = f"{curve['prefix']}.{curve['key']}" if curve["prefix"] else curve["key"]
                batch.append(Metric(metric_key(f"curve.{name}"), float(value), now, int(curve["step"])))
            else:
                batch.append(Metric(metric_key(key), float(value), now, step))
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i : i + 500])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        values = secret_values()
        for key, value in tags.items():
            self.client.set_tag(run_id, key, redact(str(value), values))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.exists():
            with artifact_errors(path.name, lambda: self.artifact_uri(run_id)):
                self.client.log_artifact(run_id, str(path), artifact_path)

    def artifact_uri(self, run_id: str) -> str | None:
        try:
            return self.client.get_run(run_id).info.artifact_uri
        except Exception:  # noqa: BLE001 - only used to name the place in an error message
            return None

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)
