"""Tell the team: a candidate awaits approval (or failed its gates), the champion changed, it was rolled back.

Each event is one JSON body POSTed to every webhook of ``registry.notify.webhooks`` and
``$ONEVISION_PROMOTION_WEBHOOKS`` (comma-separated; a URL with a token in it belongs there, not in
params.yaml). The body carries the verdict, the gate and photo report links and the exact commands to
decide; a ``text`` line for chat hooks. It is signed like MLflow's registry webhooks sign theirs: HMAC-SHA256
with the key in ``$ONEVISION_WEBHOOK_SECRET`` (``registry.notify.secret_env``) over ``TIMESTAMP.BODY``, sent as
``X-OneVision-Signature: sha256=HEX`` with ``X-OneVision-Timestamp``; a receiver recomputes it and refuses
old timestamps (replay). A delivery is retried (``max_attempts``, backoff 0.5, 1, 2 s); a failure is logged
with the webhook's host only and never blocks or fails the promotion. No credential is ever in the body:
it is built from registry tags and audit records, and passed through :func:`onevision.redact.redact`.

Why not MLflow's own registry webhooks: they exist on a server only (the embedded default has none), and
their fixed payload (model, version, alias or tag) cannot carry the verdict, the links and the command.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

from onevision.redact import redact

log = logging.getLogger(__name__)

WEBHOOKS_ENV = "ONEVISION_PROMOTION_WEBHOOKS"
SIGNATURE_HEADER = "X-OneVision-Signature"
TIMESTAMP_HEADER = "X-OneVision-Timestamp"
EVENTS = ("awaiting-approval", "gates-failed", "champion-changed", "rolled-back")


def webhook_urls(cfg) -> list[str]:
    env = [u.strip() for u in os.environ.get(WEBHOOKS_ENV, "").split(",") if u.strip()]
    return list(dict.fromkeys([*cfg.registry.notify.webhooks, *env]))


def shown_url(url: str) -> str:
    """Scheme, host and port only: a webhook's path and query often carry its token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/…" if parts.scheme else "(webhook)"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, max_age_s: float = 300.0) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        fresh = abs(time.time() - float(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def _ui(tracking_uri: str | None) -> str | None:
    """The MLflow UI's base URL (no credentials), or None for a local store."""
    parts = urlsplit(tracking_uri or "")
    if parts.scheme not in ("http", "https"):
        return None
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"


def payload(event: str, *, model: str, version: str, served_model: str, tracking_uri: str | None = None,
            run_id: str | None = None, tags: dict[str, Any] | None = None, failed: list[str] | None = None,
            attached: list[str] | None = None, record: dict[str, Any] | None = None) -> dict[str, Any]:
    ui = _ui(tracking_uri)
    links: dict[str, str] = {}
    if run_id:
        names = {"gate_report.md": "gate_report", "gate_report.png": "gate_plot", "candidate.html": "photos",
                 "evaluate.html": "evaluation_photos"}
        for name in attached or []:
            if name in names:
                links[names[name]] = f"runs:/{run_id}/gate_report/{name}"
    if ui:
        links["mlflow_version"] = f"{ui}/#/models/{quote(model)}/versions/{version}"
        if run_id:
            links["mlflow_run"] = f"{ui}/#/runs/{run_id}"
    body: dict[str, Any] = {"event": event, "model": model, "version": str(version), "served_model": served_model,
                            "links": links, "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if event in ("awaiting-approval", "gates-failed"):
        body["verdict"] = "passed" if event == "awaiting-approval" else "failed"
        body["failed_gates"] = failed or []
        body["gates"] = {k[len("gate."):-len(".value")]: v for k, v in (tags or {}).items() if k.startswith("gate.") and k.endswith(".value")}
    if event == "awaiting-approval":
        body["decide"] = {"approve": f'onevision approve {version} --reason "..."',
                          "reject": f'onevision reject {version} --reason "..."'}
        body["text"] = (f"{model} v{version} passed every gate and awaits a reviewer: "
                        f"`onevision approve {version} --reason ...` or `onevision reject {version} --reason ...`")
    elif event == "gates-failed":
        body["text"] = f"{model} v{version} failed gates {', '.join(failed or [])}: not eligible for approval"
    elif record is not None:
        body["record"] = {k: v for k, v in record.items() if k not in ("gates", "metrics")}
        if event == "champion-changed":
            body["text"] = (f"{served_model} champion is now v{version} (approved by {record.get('by')}: {record.get('reason')}); "
                            "undo with `onevision rollback --reason ...`")
        else:
            body["text"] = (f"{served_model} rolled back to v{version} by {record.get('by')} ({record.get('reason')}); "
                            f"v{record.get('rolled_back')} is marked rolled-back")
    return body


def deliver(url: str, body: dict[str, Any], *, secret: str | None, max_attempts: int = 3, timeout_s: float = 5.0,
            sleep=None) -> dict[str, Any]:
    """POST ``body`` to ``url`` with retries; returns {url (host only), ok, status, attempts, error}; never raises."""
    data = redact(json.dumps(body, sort_keys=True, default=str)).encode()
    delivery = str(uuid.uuid4())
    result: dict[str, Any] = {"url": shown_url(url), "ok": False, "status": None, "attempts": 0, "error": None}
    for attempt in range(1, max_attempts + 1):
        result["attempts"] = attempt
        timestamp = f"{time.time():.0f}"
        headers = {"Content-Type": "application/json", "User-Agent": "onevision-promotion",
                   "X-OneVision-Event": body.get("event", ""), "X-OneVision-Delivery": delivery, TIMESTAMP_HEADER: timestamp}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, data)
        request = urllib.request.Request(url, data=data, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - URL comes from config
                result["status"] = int(response.status)
            result["ok"], result["error"] = True, None
            return result
        except urllib.error.HTTPError as exc:
            result["status"], result["error"] = exc.code, f"HTTP {exc.code}"
            if exc.code < 500 and exc.code != 429:
                return result  # refused, not failing: retrying sends the same refusal
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            result["error"] = redact(str(getattr(exc, "reason", exc)))
        if attempt < max_attempts:
            (sleep or time.sleep)(0.5 * 2 ** (attempt - 1))
    return result


def notify(cfg, event: str, **fields: Any) -> list[dict[str, Any]]:
    """Send ``event`` to every configured webhook; failures are logged and returned, never raised."""
    urls = webhook_urls(cfg)
    if not urls:
        return []
    try:
        body = payload(event, **fields)
    except Exception:  # noqa: BLE001 - a notification never blocks a promotion
        log.exception("the %s notification could not be built (the promotion goes on)", event)
        return []
    conf = cfg.registry.notify
    secret = os.environ.get(conf.secret_env) or None
    results = []
    for url in urls:
        result = deliver(url, body, secret=secret, max_attempts=conf.max_attempts, timeout_s=conf.timeout_s)
        if result["ok"]:
            log.info("notified %s of %s v%s (%s)", result["url"], event, body["version"], "signed" if secret else "unsigned")
        else:
            log.warning("notification %s of v%s to %s failed after %d attempt(s): %s (the promotion goes on)",
                        event, body["version"], result["url"], result["attempts"], result["error"])
        results.append(result)
    return results
