"""Transient object-store faults injected on a loopback S3 endpoint (moto's server behind a faulty proxy):
retried with backoff up to ``storage.max_attempts``, then a clear failure; a drift run reports it as an
infrastructure error, never as an alarm."""

from __future__ import annotations

import pytest

from onevision.monitoring.publish import describe_error
from onevision.storage.s3 import ObjectStore
from tests.integration.conftest import moto_s3
from tests.support.drill import count
from tests.support.proxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUCKET = "onevision-faults"
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultyProxy(FaultProxy):
    """Forwards to moto's server; the first ``faults`` PUTs get 503 SlowDown (as S3 answers under load)."""

    def __init__(self, upstream: str):
        self.faults, self.puts, self.injected = 0, 0, 0
        super().__init__(upstream)

    def fault(self, method: str, path: str) -> tuple[int, str, bytes] | None:
        if method != "PUT":
            return None
        self.puts += 1
        if self.faults <= 0:
            return None
        self.faults -= 1
        self.injected += 1
        count("faults.object_store")
        return 503, "application/xml", SLOW_DOWN


@pytest.fixture(scope="module")
def proxy():
    with moto_s3(BUCKET) as endpoint:
        p = FaultyProxy(endpoint)
        yield p
        p.close()


def test_transient_errors_are_retried_with_backoff_then_succeed(proxy, tmp_path):
    report = tmp_path / "report.html"
    report.write_text("<html>verdict</html>")
    proxy.faults, proxy.puts = 3, 0
    store = ObjectStore(BUCKET, "team", proxy.url, max_attempts=5)
    uri = store.upload_file(report, "drift/run-1/report.html")
    assert uri == f"s3://{BUCKET}/team/drift/run-1/report.html"
    assert proxy.puts == 4 and proxy.faults == 0  # three refused, the fourth stored
    store.download_file("drift/run-1/report.html", tmp_path / "back.html")
    assert (tmp_path / "back.html").read_text() == "<html>verdict</html>"


def test_persistent_errors_fail_clearly_after_the_configured_attempts(proxy, tmp_path):
    report = tmp_path / "report.html"
    report.write_text("x")
    proxy.faults, proxy.puts = 100, 0
    store = ObjectStore(BUCKET, "team", proxy.url, max_attempts=3)
    with pytest.raises(Exception) as err:
        store.upload_file(report, "drift/run-2/report.html")
    proxy.faults = 0
    assert proxy.puts == 3  # exactly storage.max_attempts, then it gives up
    message = describe_error(err.value)
    assert "SlowDown" in message or "reduce your request rate" in message, message
    assert "Traceback" not in message and len(message) < 600


def test_a_drift_run_whose_store_keeps_failing_is_an_infrastructure_error_not_an_alarm(proxy, tmp_path):
    from typer.testing import CliRunner

    from onevision.app.cli import app
    from tests.support.projects import build_project
    from tests.support.synthetic_shop import synthetic_window

    root = build_project(tmp_path / "proj", "synthetic").root
    synthetic_window(root, 300, seed=5).to_parquet(root / "clean.parquet")
    proxy.faults = 10_000
    try:
        result = CliRunner().invoke(app, ["drift", "--current", str(root / "clean.parquet"), "--root", str(root),
                                          "--set", f"storage.bucket={BUCKET}", "--set", f"storage.endpoint_url={proxy.url}",
                                          "--set", "storage.max_attempts=2"], env={"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"})
    finally:
        proxy.faults = 0
    assert result.exit_code == 4, result.output[-2000:]  # infrastructure error: the verdict printed, nobody paged
    assert "Traceback" not in result.output


def test_a_prefect_task_that_fails_once_is_retried_and_the_run_completes(proxy, tmp_path, prefect_server, monkeypatch):
    """The drift flow's upload task fails its first try (one 503, no botocore retry: storage.max_attempts=1);
    Prefect's task retry succeeds, the run completes, every report is in the bucket."""
    import boto3

    import tasks.drift
    from tests.support.flows import load
    from tests.support.projects import build_project
    from tests.support.synthetic_shop import synthetic_window

    drift_monitor = load("drift.py:drift_monitor")
    monkeypatch.setattr(tasks.drift.upload_drift_reports, "retry_delay_seconds", [0.2, 0.2, 0.2])
    root = build_project(tmp_path / "proj", "synthetic").root
    synthetic_window(root, 300, seed=5).to_parquet(root / "clean.parquet")
    proxy.faults, proxy.injected = 1, 0
    state = drift_monitor(root=str(root), current=str(root / "clean.parquet"), return_state=True,
                          overrides=[f"storage.bucket={BUCKET}", f"storage.endpoint_url={proxy.url}", "storage.max_attempts=1",
                                     "storage.prefix=retried"])
    assert proxy.injected == 1
    assert state.is_completed() and state.name == "Completed", (state.name, state.message)
    run_id = state.result()["run_id"]
    s3 = boto3.client("s3", endpoint_url=proxy.url)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="retried/")["Contents"]}
    assert {f"retried/drift/{run_id}/{n}" for n in ("report.html", "summary.json", "summary.md")} <= keys
