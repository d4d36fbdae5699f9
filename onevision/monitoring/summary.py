"""A drift run's summary: its three statuses and the markdown view on-call reads (``summary.md``, the terminal)."""

from __future__ import annotations

from typing import Any

from onevision import markdown
from onevision.monitoring.page import drifted_columns, ordered_checks

STATUS_OK, STATUS_DRIFT, STATUS_INSUFFICIENT = "ok", "drift", "insufficient_data"


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
