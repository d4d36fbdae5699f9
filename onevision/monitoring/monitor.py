"""One drift run: reference vs current window -> Evidently HTML, JSON summary, MLflow, S3, alert.

The steps are separate functions so the Prefect flow can run each as a task
and the CLI can call them in a row:

* :func:`current_traffic` — the window to check (a log file, or the project's held-out split);
* :func:`run_drift_check` — features, Evidently report, verdict; writes
  ``report.html``, ``summary.json``, ``summary.md`` and ``evidently.json`` to
  ``reports/drift/<run_id>/``;
* :func:`log_to_mlflow`, :func:`upload_reports` — store the run's files;
* :func:`send_alert` — POST the verdict to a webhook.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from onevision import markdown, paths
from onevision.config import Config
from onevision.monitoring.drills import drill_window
from onevision.monitoring.features import (
    Catalog,
    ImageEmbedder,
    Projection,
    add_components,
    image_embedder,
    pc_columns,
    window_features,
)
from onevision.monitoring.page import drifted_columns, ordered_checks, with_verdict_first
from onevision.monitoring.report import build_report, check_specs
from onevision.monitoring.sids import SidAssigner, default_sid_assigner
from onevision.monitoring.window import latest, read_window, reference_window, split_queries
from onevision.storage.s3 import ObjectStore, describe_store_error
from onevision.tracking import Tracker, describe_tracking_error, git_revision, retry_environment

log = logging.getLogger(__name__)

DRIFT_REPORTS = paths.REPORTS / "drift"
# Every drift run's Evidently snapshot also goes into this local workspace: `evidently ui --workspace
# .onevision/evidently` shows the history of the daily runs (one project per profile).
EVIDENTLY_WORKSPACE = Path(".onevision") / "evidently"
STATUS_OK, STATUS_DRIFT, STATUS_INSUFFICIENT = "ok", "drift", "insufficient_data"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def current_traffic(
    cfg: Config,
    root: Path,
    *,
    current_path: str | Path | None = None,
    window: str | None = None,
    simulate_shift: str | None = None,
    drill_rows: int = 2000,
    drill_seed: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """The current window and a label for it.

    ``simulate_shift``: a drill window (:mod:`onevision.monitoring.drills`) of
    ``drill_rows`` queries. Otherwise ``current_path`` (else
    ``drift.current_path``, else the held-out test split), cut to its latest
    ``window`` (else ``drift.window``).
    """
    if simulate_shift is not None:
        seed = cfg.seed + 7919 if drill_seed is None else drill_seed
        return drill_window(cfg, root, simulate_shift, drill_rows, seed), f"drill: simulated shift '{simulate_shift}' (seed {seed})"
    path = current_path or cfg.drift.current_path
    window = window or cfg.drift.window
    if path:
        frame, label = read_window(path), str(path)
    else:
        frame, label = split_queries(root, "test"), "test split (stand-in for production traffic)"
    frame = latest(frame, window)
    return frame, label + (f", last {window}" if window else "")


def _time_range(frame: pd.DataFrame) -> dict[str, str | None]:
    if "ts" not in frame.columns or frame.empty:
        return {"ts_min": None, "ts_max": None}
    ts = pd.to_datetime(frame["ts"], utc=True, errors="coerce")
    return {"ts_min": str(ts.min()), "ts_max": str(ts.max())}


def _sid_prefixes(frame: pd.DataFrame, feats, assigner: SidAssigner | None) -> np.ndarray | None:
    if "sid_prefix" in frame.columns:
        return frame["sid_prefix"].astype(object).where(frame["sid_prefix"].notna(), None).to_numpy()
    if assigner is None:
        return None
    out = np.full(len(frame), None, dtype=object)
    ok = feats.image_ok
    if ok.any():
        users = pd.to_numeric(frame["user_id"], errors="coerce").fillna(-1).to_numpy(np.int64)
        out[ok] = assigner.assign(feats.images[ok], users[ok], feats.embeddings[ok])
    return out


@dataclass
class Baseline:
    """Everything derived from the reference window once: reuse it across current windows."""

    catalog: Catalog
    embedder: ImageEmbedder
    projection: Projection
    frame: pd.DataFrame  # monitored columns of the reference, with pc.. and sid_prefix
    sid_assigner: SidAssigner | None
    sid_source: str
    info: dict[str, Any]  # split, rows, time range

    @property
    def has_sids(self) -> bool:
        return bool(self.frame["sid_prefix"].notna().any())


def build_baseline(
    cfg: Config, root: Path, reference: pd.DataFrame | None = None, sid_assigner: SidAssigner | None | str = "auto"
) -> Baseline:
    """Features of the reference window, the PCA fitted on its embeddings and the SID source.

    ``reference``: defaults to ``drift.reference_rows`` seeded queries of the
    ``drift.reference_split`` split. ``sid_assigner``: ``"auto"`` uses the kNN
    stand-in when encoder, item embeddings and SID table exist; None skips the
    SID check unless the windows carry a ``sid_prefix`` column.
    """
    d = cfg.drift
    if reference is None:
        reference = reference_window(root, d.reference_split, d.reference_rows, cfg.seed)
    catalog = Catalog.load(cfg, root)
    embedder = image_embedder(cfg, root)
    feats = window_features(reference, catalog, embedder)
    if not feats.image_ok.any():
        raise ValueError("the reference window has no usable image")
    projection = Projection.fit(feats.embeddings[feats.image_ok], d.embedding_components)
    if "sid_prefix" in reference.columns:
        assigner, sid_source = None, "precomputed sid_prefix columns"
    elif sid_assigner == "auto":
        assigner, sid_source = default_sid_assigner(root, d.sid_levels, getattr(embedder, "is_encoder", False))
    else:
        assigner = sid_assigner  # type: ignore[assignment]
        sid_source = assigner.name if assigner is not None else "skipped: no model"
    frame = add_components(feats, projection)
    sids = _sid_prefixes(reference, feats, assigner)
    frame["sid_prefix"] = sids if sids is not None else None
    info = {"split": d.reference_split, "rows": int(len(reference)), **_time_range(reference)}
    return Baseline(catalog, embedder, projection, frame, assigner, sid_source, info)


def run_drift_check(
    cfg: Config,
    root: Path,
    *,
    current: pd.DataFrame,
    current_label: str = "current",
    baseline: Baseline | None = None,
    out_dir: Path | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Compare ``current`` with the reference window; write the report files; return the summary.

    ``baseline``: from :func:`build_baseline` (built here when None).
    """
    t0 = time.perf_counter()
    root = Path(root)
    d = cfg.drift
    run_id = run_id or new_run_id()
    out_dir = Path(out_dir) if out_dir else root / DRIFT_REPORTS / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": cfg.profile,
        "current": {"label": current_label, "rows": int(len(current)), **_time_range(current)},
        "thresholds": {k: v for k, v in d.model_dump().items() if k.endswith("threshold") or k == "max_bad_fraction"},
    }
    if len(current) < d.min_rows:
        summary.update(reference=baseline.info if baseline else {"split": d.reference_split, "rows": None}, status=STATUS_INSUFFICIENT, drift_detected=False, alarms=[], checks={},
                       message=f"{len(current)} current queries < drift.min_rows={d.min_rows}: no verdict")
        return _write_outputs(summary, None, out_dir, t0)

    t_base = time.perf_counter()
    baseline = baseline or build_baseline(cfg, root)
    baseline_seconds = time.perf_counter() - t_base
    t_feat = time.perf_counter()
    feats = window_features(current, baseline.catalog, baseline.embedder)
    cur_frame = add_components(feats, baseline.projection)
    ref_frame = baseline.frame
    sids = _sid_prefixes(current, feats, baseline.sid_assigner)
    skipped: dict[str, str] = {}
    if sids is None or not baseline.has_sids:
        skipped["generated_sid"] = baseline.sid_source if baseline.sid_source.startswith("skipped") else "skipped: no model"
    cur_frame["sid_prefix"] = sids if sids is not None else None
    feature_seconds = time.perf_counter() - t_feat

    t_rep = time.perf_counter()
    specs = check_specs(pc_columns(baseline.projection.axes.shape[1]))
    snapshot, results = build_report(ref_frame, cur_frame, d, specs, skipped)
    report_seconds = time.perf_counter() - t_rep
    alarms = [r.name for r in results if r.alarm]
    summary.update(
        reference=baseline.info,
        status=STATUS_DRIFT if alarms else STATUS_OK,
        drift_detected=bool(alarms),
        alarms=alarms,
        embedding_source=baseline.embedder.name,
        embedding_components={
            "n": int(baseline.projection.axes.shape[1]),
            "explained_variance": round(float(baseline.projection.explained.sum()), 4),
        },
        sid_source=baseline.sid_source,
        checks={r.name: r.to_dict() for r in results},
        timing={
            "baseline_seconds": round(baseline_seconds, 3),
            "features_seconds": round(feature_seconds, 3),
            "report_seconds": round(report_seconds, 3),
        },
    )
    return _write_outputs(summary, snapshot, out_dir, t0, root)


def _write_outputs(summary: dict[str, Any], snapshot, out_dir: Path, t0: float, root: Path | None = None) -> dict[str, Any]:
    files = {"summary_json": out_dir / "summary.json", "summary_md": out_dir / "summary.md"}
    if snapshot is not None:
        t = time.perf_counter()
        files["report_html"] = out_dir / "report.html"
        files["evidently_json"] = out_dir / "evidently.json"
        tmp = out_dir / ".report.html.tmp"
        snapshot.save_html(str(tmp))
        tmp.write_text(with_verdict_first(tmp.read_text(encoding="utf-8"), summary), encoding="utf-8")
        tmp.replace(files["report_html"])  # the verdict on top of Evidently's details, written atomically
        files["evidently_json"].write_text(snapshot.json())
        summary.setdefault("timing", {})["html_seconds"] = round(time.perf_counter() - t, 3)
        if root is not None:
            summary["evidently_workspace"] = add_to_workspace(root, summary, snapshot)
    summary.setdefault("timing", {})["total_seconds"] = round(time.perf_counter() - t0, 3)
    summary["artifacts"] = {"dir": str(out_dir), **{k: str(v) for k, v in files.items()}}
    files["summary_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    files["summary_md"].write_text(summary_markdown(summary))
    log.info("drift run %s: %s (alarms: %s) -> %s", summary["run_id"], summary["status"], ", ".join(summary["alarms"]) or "none", out_dir)
    return summary


def add_to_workspace(root: Path, summary: dict[str, Any], snapshot) -> str | None:
    """Add the run's snapshot to the project's local Evidently workspace (project ``onevision-drift-<profile>``);
    returns the workspace path, None (with a warning) if Evidently refuses: the run's own files are complete."""
    try:
        # lazy: Evidently ~4 s: its workspace only when the report is published to one
        from evidently.ui.workspace import Workspace

        path = root / EVIDENTLY_WORKSPACE
        workspace = Workspace.create(str(path))
        name = f"onevision-drift-{summary.get('profile', 'default')}"
        found = workspace.search_project(name)
        project = found[0] if found else workspace.create_project(name, description="OneVision drift runs (onevision drift / drift_monitor)")
        workspace.add_run(project.id, snapshot, name=f"{summary['run_id']} {summary['status']}")
        return str(path)
    except Exception as exc:  # noqa: BLE001 - history is a convenience; the verdict and report files stand
        log.warning("drift run %s: not added to the Evidently workspace: %s", summary["run_id"], exc)
        return None


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The on-call view of a run: verdict, per-check score vs threshold, where the report is."""
    verdict = {STATUS_DRIFT: "🚨 DRIFT", STATUS_OK: "✅ no drift", STATUS_INSUFFICIENT: "⚠️ insufficient data"}[summary["status"]]
    cur, ref = summary["current"], summary["reference"]
    lines = [
        f"# Drift run {summary['run_id']}: {verdict}",
        "",
        f"- current: {cur['label']} — {cur['rows']} queries ({cur.get('ts_min')} → {cur.get('ts_max')})",
        f"- reference: split `{ref['split']}` — {ref.get('rows') or '—'} queries",
    ]
    if summary["status"] == STATUS_INSUFFICIENT:
        lines += ["", summary.get("message", "")]
    else:
        lines += [
            f"- embedding: {summary.get('embedding_source')}",
            f"- generated SIDs: {summary.get('sid_source')}",
            f"- alarms: {', '.join(summary['alarms']) or 'none'}",
            "",
        ]
        rows = []
        for name, check in ordered_checks(summary):  # the worst first
            worst = ""
            drifted = drifted_columns(check, limit=5)
            if drifted and len(check["columns"]) > 1:
                worst = f" ({', '.join(f'{c} {s:.3f}' for c, s in drifted)})"
            rows.append([name, f"{check['status']}{worst}", _fmt(check["score"]), _fmt(check["threshold"]), check["meaning"]])
        lines.append(markdown.table(rows, ["check", "status", "score", "threshold", "what an alarm means"], align="llrrl"))
        issues = summary["checks"].get("data_quality", {}).get("details", {}).get("issues")
        if issues:
            lines += ["", "Data-quality issues: " + ", ".join(f"{k}={v}" for k, v in issues.items())]
    arts = summary.get("artifacts", {})
    lines += ["", f"Report: `{arts.get('report_html', '—')}`  JSON: `{arts.get('summary_json', '—')}`"]
    if arts.get("s3"):
        lines.append("S3: " + ", ".join(f"`{u}`" for u in arts["s3"]))
    if arts.get("mlflow_run_id"):
        lines.append(f"MLflow run: `{arts['mlflow_run_id']}` (experiment `{arts.get('mlflow_experiment')}`)")
    lines += ["", "What to do: docs/oncall.md"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- storing and alerting


def _report_files(summary: dict[str, Any]) -> list[Path]:
    arts = summary.get("artifacts", {})
    keys = ("report_html", "summary_json", "summary_md", "evidently_json")
    return [Path(arts[k]) for k in keys if arts.get(k) and Path(arts[k]).exists()]


def _rewrite_summary(summary: dict[str, Any]) -> None:
    arts = summary.get("artifacts", {})
    if arts.get("summary_json"):
        Path(arts["summary_json"]).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        Path(arts["summary_md"]).write_text(summary_markdown(summary))


def log_to_mlflow(cfg: Config, root: Path, summary: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """One MLflow run in ``drift.experiment``: thresholds as params, scores as metrics, report files as artifacts."""

    tracker = Tracker(Path(root), cfg.drift.experiment, cfg.tracking.tracking_uri, retry_environment(cfg))
    run_tags = {
        "status": summary["status"],
        "drift_detected": str(summary["drift_detected"]).lower(),
        "alarms": ",".join(summary["alarms"]),
        "current": summary["current"]["label"][:500],
        "git_revision": git_revision(Path(root)),
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


class AlertError(RuntimeError):
    """The webhook did not accept the alert."""


def alert_payload(summary: dict[str, Any]) -> dict[str, Any]:
    """A compact, chat-friendly JSON body (``text`` for Slack-style hooks, the rest for machines)."""
    alarms = [
        {"check": name, "score": c["score"], "threshold": c["threshold"], "meaning": c["meaning"]}
        for name, c in summary.get("checks", {}).items()
        if c["status"] == STATUS_DRIFT
    ]
    arts = summary.get("artifacts", {})
    names = ", ".join(a["check"] for a in alarms) or "none"
    return {
        "text": f"OneVision drift alarm ({summary['run_id']}): {names} — current {summary['current']['label']}",
        "run_id": summary["run_id"],
        "status": summary["status"],
        "drift_detected": summary["drift_detected"],
        "alarms": alarms,
        "current_rows": summary["current"]["rows"],
        "report": (arts.get("s3") or [arts.get("report_html")])[0],
        "mlflow_run_id": arts.get("mlflow_run_id"),
        "runbook": "docs/oncall.md",
    }


WEBHOOK_ENV = "ONEVISION_DRIFT_WEBHOOK_URL"


def webhook_url(cfg) -> str | None:
    """Where alarms go: ``$ONEVISION_DRIFT_WEBHOOK_URL`` (a URL with a token is a credential: keep it in the
    environment or a secret store), else ``drift.webhook_url`` (a token-less URL may live in params.yaml)."""
    return os.environ.get(WEBHOOK_ENV) or cfg.drift.webhook_url


def shown_url(url: str) -> str:
    """``url`` as messages show it: scheme, host and port only (a webhook's path and query carry its token)."""

    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/…" if parts.scheme else "(webhook)"


def send_alert(url: str, summary: dict[str, Any], timeout: float = 5.0) -> int:
    """POST :func:`alert_payload` as JSON to ``url``; returns the HTTP status, raises :class:`AlertError` otherwise."""

    body = json.dumps(alert_payload(summary), default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL comes from config
            status = int(response.status)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise AlertError(f"webhook {shown_url(url)} failed: {exc}") from exc
    if not 200 <= status < 300:
        raise AlertError(f"webhook {shown_url(url)} answered HTTP {status}")
    return status
