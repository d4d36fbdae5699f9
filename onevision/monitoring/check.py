"""One drift check: the current window against the reference window -> Evidently report, verdict, summary files.

The steps the ``drift_monitor`` flow runs as tasks, callable from a test without Prefect:

* :func:`current_traffic` — the window to check (a log file, the project's held-out split, or a drill);
* :func:`build_baseline` — what the reference window gives once (features, PCA, SID source);
* :func:`run_drift_check` — features, Evidently report, verdict; writes ``report.html``,
  ``summary.json``, ``summary.md`` and ``evidently.json`` to ``reports/drift/<run_id>/``.

Publishing the files is ``publish.py``, alerting ``alert.py``, the summary's statuses and on-call view ``summary.py``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevision import paths
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
from onevision.monitoring.page import with_verdict_first
from onevision.monitoring.report import build_report, check_specs
from onevision.monitoring.sids import SidAssigner, default_sid_assigner
from onevision.monitoring.summary import STATUS_DRIFT, STATUS_INSUFFICIENT, STATUS_OK, summary_markdown
from onevision.monitoring.window import latest, read_window, reference_window, split_queries

log = logging.getLogger(__name__)

DRIFT_REPORTS = paths.REPORTS / "drift"
# Every drift run's Evidently snapshot also goes into this local workspace: `evidently ui --workspace
# .onevision/evidently` shows the history of the daily runs (one project per profile).
EVIDENTLY_WORKSPACE = Path(".onevision") / "evidently"


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
        # lazy: Evidently: its workspace only when the report is published to one
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
