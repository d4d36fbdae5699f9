"""Alerting on a drift alarm: a compact JSON body POSTed to a webhook, whose URL never shows its token."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from onevision.monitoring.summary import STATUS_DRIFT


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
