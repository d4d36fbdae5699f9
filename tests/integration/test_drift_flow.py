"""The drift_monitor flow end to end: Prefect state, webhook, MLflow run, S3 upload, markdown artifact; and
`onevision drift`, which runs the same flow file (flows/drift.py) and ends in the same state for the same inputs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from onevision.monitoring.drills import simulate_shift
from tests.integration.conftest import moto_s3
from tests.support.flows import load
from tests.support.projects import build_project
from tests.support.synthetic_shop import synthetic_window

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUCKET = "onevision-reports"


def load_drift_monitor():
    """The flow as a worker running the `drift-daily` deployment loads it."""
    return load("drift.py:drift_monitor")


@pytest.fixture(scope="module")
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real HTTP S3 endpoint on loopback (moto server), with the reports bucket."""
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def project(tmp_path_factory, isolated_state):
    root = build_project(tmp_path_factory.mktemp("drift-flow") / "proj", "synthetic").root
    items = pd.read_parquet(root / "data/validated/items.parquet")
    clean = synthetic_window(root, 300, seed=5)
    clean.to_parquet(root / "clean.parquet")
    simulate_shift("lighting", clean, items, seed=1).to_parquet(root / "dark.parquet")
    return root


def _overrides(webhook_url: str, endpoint: str) -> list[str]:
    return [f"drift.webhook_url={webhook_url}", f"storage.bucket={BUCKET}", f"storage.endpoint_url={endpoint}", "storage.prefix=team"]


def test_shifted_traffic_fails_the_run_alerts_and_stores_everything(project, prefect_server, webhook, s3_endpoint):
    import boto3
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import Artifact

    drift_monitor = load_drift_monitor()
    url, received = webhook
    received.clear()
    state = drift_monitor(root=str(project), current=str(project / "dark.parquet"), overrides=_overrides(url, s3_endpoint), return_state=True)
    assert state.is_failed() and state.name == "Drifted" and "image_stats" in state.message

    summary = json.loads(max((project / "reports/drift").glob("*/summary.json")).read_text())
    assert summary["drift_detected"] and "image_stats" in summary["alarms"]
    # webhook
    (alert,) = received
    assert alert["run_id"] == summary["run_id"] and {a["check"] for a in alert["alarms"]} >= {"image_stats"}
    assert alert["report"].startswith(f"s3://{BUCKET}/team/drift/{summary['run_id']}/")
    # object store
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {f"team/drift/{summary['run_id']}/{name}" for name in ("report.html", "summary.json", "summary.md", "evidently.json")} <= keys
    # MLflow
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(summary["artifacts"]["mlflow_run_id"])
    assert run.data.tags["status"] == "drift" and run.data.metrics["image_stats.alarm"] == 1.0
    assert run.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    # the markdown summary on the flow run
    artifact = Artifact.get("drift-summary")
    assert artifact is not None and "DRIFT" in artifact.data and "image_stats" in artifact.data


def test_clean_traffic_completes_without_alert(project, prefect_server, webhook, s3_endpoint):
    drift_monitor = load_drift_monitor()
    url, received = webhook
    received.clear()
    state = drift_monitor(root=str(project), current=str(project / "clean.parquet"), overrides=_overrides(url, s3_endpoint), return_state=True)
    assert state.is_completed() and state.name == "Completed"
    summary = state.result()
    assert summary["status"] == "ok" and not summary["drift_detected"]
    assert received == []


def test_an_unreachable_store_on_a_quiet_day_is_an_infrastructure_error_not_an_alarm(project, prefect_server, webhook, monkeypatch):
    import tasks.drift

    drift_monitor = load_drift_monitor()
    monkeypatch.setattr(tasks.drift.upload_drift_reports, "retry_delay_seconds", [0.1, 0.1, 0.1])
    url, received = webhook
    received.clear()
    dead = "http://127.0.0.1:9"  # nothing listens: connection refused
    overrides = [f"drift.webhook_url={url}", f"storage.bucket={BUCKET}", f"storage.endpoint_url={dead}"]
    state = drift_monitor(root=str(project), current=str(project / "clean.parquet"), overrides=overrides, return_state=True)
    assert state.is_failed() and state.name == "InfrastructureError", (state.name, state.message)
    assert "verdict ok" in state.message and "object store" in state.message and "not a drift alarm" in state.message
    assert "Traceback" not in state.message
    assert received == []  # nobody paged on a quiet day


def test_cli_exit_code_4_for_an_infrastructure_error(project, prefect_server, monkeypatch):
    from typer.testing import CliRunner

    from onevision.app.cli import app

    # the CLI points MLFLOW_TRACKING_URI at the project (setdefault): set here so the test leaves no trace
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["drift", "--root", str(project), "--current", str(project / "clean.parquet"),
                                      "--set", f"storage.bucket={BUCKET}", "--set", "storage.endpoint_url=http://127.0.0.1:9"])
    assert result.exit_code == 4, result.output
    assert "no drift" in result.output and "infrastructure error (not a drift alarm)" in result.output


def test_alerting_without_failing_when_configured(project, prefect_server, webhook, s3_endpoint):
    drift_monitor = load_drift_monitor()
    url, _ = webhook
    overrides = [*_overrides(url, s3_endpoint), "drift.fail_on_drift=false"]
    state = drift_monitor(root=str(project), current=str(project / "dark.parquet"), overrides=overrides, publish=False, return_state=True)
    assert state.is_completed() and state.name == "Drifted"


# ----------------------------------------------------------------------------- one route: the command runs the flow


def _cli(project, *args: str):
    from typer.testing import CliRunner

    from onevision.app.cli import app

    return CliRunner().invoke(app, ["drift", "--root", str(project), *args])


def _last_drift_run_state():
    """The final state of the latest drift_monitor flow run on the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["drift_monitor"])),
                                       sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    return run.state


def _drift_runs(project) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("onevision-drift")
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id]))


def test_cli_exit_codes(project, prefect_server, tmp_path, monkeypatch):
    """0 no drift, 1 drift, 2 bad input, 3 too few queries: the documented codes (README, docs/oncall.md)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    base = ["--no-publish"]
    ok = _cli(project, *base, "--current", str(project / "clean.parquet"), "--out", str(tmp_path / "a"))
    assert ok.exit_code == 0, ok.output
    assert "no drift" in ok.output
    bad = _cli(project, *base, "--current", str(project / "dark.parquet"), "--out", str(tmp_path / "b"), "--json")
    assert bad.exit_code == 1, bad.output
    assert "image_stats" in json.loads(bad.output[bad.output.index("{"):])["alarms"]
    assert (tmp_path / "b" / "summary.json").exists()  # --out honoured
    assert _cli(project, *base, "--simulate-shift", "earthquake").exit_code == 2
    missing = _cli(project, *base, "--current", str(tmp_path / "missing.parquet"))
    assert missing.exit_code == 2 and "missing.parquet" in missing.output and "Traceback" not in missing.output
    few = _cli(project, *base, "--current", str(project / "clean.parquet"), "--window", "1h", "--out", str(tmp_path / "c"))
    assert few.exit_code == 3, few.output


def test_a_short_window_ends_the_same_from_the_command_and_the_flow_and_publishes_nothing(project, prefect_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    before = _drift_runs(project)
    args = {"current": str(project / "clean.parquet"), "window": "1h"}
    state = load_drift_monitor()(root=str(project), **args, return_state=True)
    assert state.is_completed() and state.name == "InsufficientData", (state.name, state.message)
    result = _cli(project, "--current", args["current"], "--window", args["window"])
    assert result.exit_code == 3, result.output
    assert _last_drift_run_state().name == state.name == "InsufficientData"
    assert _drift_runs(project) == before  # no verdict, nothing published: neither route logs an MLflow run


def test_an_unapproved_champion_ends_the_same_from_the_command_and_the_flow(project, prefect_server, monkeypatch):
    """The alias moved by hand (the MLflow API, no audit record): both routes refuse before checking anything;
    with `registry.unapproved_champion: warn` both go on."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    client.create_registered_model("onevision")
    version = client.create_model_version("onevision", source=str(project / "nowhere"))
    client.set_registered_model_alias("onevision", "champion", version.version)
    try:
        reports = set((project / "reports/drift").glob("*")) if (project / "reports/drift").exists() else set()
        current = str(project / "clean.parquet")
        state = load_drift_monitor()(root=str(project), current=current, return_state=True)
        assert state.is_failed() and state.name == "UnapprovedChampion", (state.name, state.message)
        assert f"champion v{version.version}" in state.message and "onevision approve" in state.message
        result = _cli(project, "--current", current)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"champion v{version.version}" in result.output and "onevision approve" in result.output
        assert _last_drift_run_state().name == "UnapprovedChampion"
        assert set((project / "reports/drift").glob("*")) == reports  # refused before any report was written

        warn = ["registry.unapproved_champion=warn"]
        state = load_drift_monitor()(root=str(project), current=current, overrides=warn, publish=False, return_state=True)
        assert state.is_completed() and state.name == "Completed", (state.name, state.message)
        result = _cli(project, "--current", current, "--set", warn[0], "--no-publish")
        assert result.exit_code == 0, result.output
        assert _last_drift_run_state().name == "Completed"
    finally:
        client.delete_registered_model("onevision")
