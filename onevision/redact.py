"""Keep credentials out of logs, MLflow params/tags and reports.

Credentials reach the platform only through the environment (the AWS chain,
``PGPASSWORD``, ``ONEVISION_DRIFT_WEBHOOK_URL``, tokens). :func:`install` makes
every log record of the process, from any library (Prefect's API log handler,
MLflow, boto3, requests), carry ``***`` in place of those values, and of a
password inside any URL (``scheme://user:password@host``); the tracker and the
error messages of the command line pass through :func:`redact` too.
"""

from __future__ import annotations

import logging
import os
import re
import traceback

# Environment variables whose values are credentials.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|AUTH|WEBHOOK|SESSION", re.I)
MASK = "***"
_MIN_LEN = 6  # shorter values would mask ordinary words
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^\s:/@]+:)(?P<pw>[^\s@/]+)(?=@)", re.I)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Credential values in the environment, longest first (so a value containing another is masked whole)."""
    env = os.environ if environ is None else environ
    found = set()
    for name, value in env.items():
        if not value:
            continue
        if SECRET_NAME.search(name) and len(value) >= _MIN_LEN:
            found.add(value)
        for m in _URL_PASSWORD.finditer(value):
            if len(m.group("pw")) >= 3:
                found.add(m.group("pw"))
    return sorted(found, key=len, reverse=True)


def redact(text: str, values: list[str] | None = None) -> str:
    """``text`` with every credential of the environment (and any URL password) replaced by ``***``."""
    if not text:
        return text
    for value in secret_values() if values is None else values:
        if value in text:
            text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


_installed = False


def install() -> None:
    """Redact every log record this process creates, whoever logs it (idempotent)."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's business, not ours
            return record
        values = secret_values()
        clean = redact(message, values)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text, values)  # formatters print exc_text when set
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
