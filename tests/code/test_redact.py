"""Credentials from the environment never reach a log line, an MLflow param/tag or an error message."""

from __future__ import annotations

import logging

import pytest

from onevision import redact
from onevision.monitoring.alert import AlertError, send_alert, shown_url
from tests.code.test_drift_monitoring import SUMMARY

CANARY = {
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-7f3a9c",
    "ONEVISION_DRIFT_WEBHOOK_URL": "http://127.0.0.1:9/services/T0/B0/canary-hook-token-51d2",
    "PGPASSWORD": "canary-pg-pass-88e1",
    "DATABASE_URL": "postgresql://onevision:canary-db-pw-19@127.0.0.1:5432/onevision",
    "PROJECT_HOME_DIR": "/home/alice",
}


@pytest.fixture
def canaries(monkeypatch):
    for k, v in CANARY.items():
        monkeypatch.setenv(k, v)


def test_secret_values_are_masked_in_any_text(canaries):
    text = ("key canary-aws-secret-7f3a9c, hook http://127.0.0.1:9/services/T0/B0/canary-hook-token-51d2, "
            "pg canary-pg-pass-88e1, db canary-db-pw-19, home /home/alice, other url https://bob:hunter22@example.org/x")
    out = redact.redact(text)
    for value in ("canary-aws-secret-7f3a9c", "canary-hook-token-51d2", "canary-pg-pass-88e1", "canary-db-pw-19", "hunter22"):
        assert value not in out
    assert "/home/alice" in out and "https://bob:***@example.org/x" in out


def test_every_log_record_is_redacted_once_installed(canaries, caplog):
    redact.install()
    log = logging.getLogger("some.library")
    with caplog.at_level(logging.INFO):
        log.info("connecting with %s", CANARY["PGPASSWORD"])
        try:
            raise RuntimeError(f"refused: {CANARY['AWS_SECRET_ACCESS_KEY']}")
        except RuntimeError:
            log.exception("upload failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "canary-pg-pass" not in text and "canary-aws-secret" not in text
    assert "connecting with ***" in caplog.text and "refused: ***" in text


def test_a_failed_webhook_names_its_host_not_its_token():
    url = "http://127.0.0.1:9/services/T0/B0/canary-hook-token-51d2?key=abc"
    assert shown_url(url) == "http://127.0.0.1:9/…"
    with pytest.raises(AlertError) as err:
        send_alert(url, SUMMARY, timeout=1)
    assert "canary-hook-token" not in str(err.value) and "127.0.0.1:9" in str(err.value)


def test_tracker_params_and_tags_are_redacted(canaries, tmp_path):
    from onevision.tracking import Tracker

    tracker = Tracker(tmp_path, "t", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_parent("p", {}, {"storage": {"endpoint": CANARY["DATABASE_URL"]}})
    tracker.set_tags(run_id, {"error": f"boom {CANARY['PGPASSWORD']}"})
    run = tracker.client.get_run(run_id)
    assert "canary" not in str(run.data.params) + str(run.data.tags)
