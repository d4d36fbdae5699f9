"""An MLflow tracking server that is down for a while, or for good, under a promotion run.

A real ``mlflow server`` (SQLite backend, artifacts proxied to a local folder) sits behind a loopback proxy that
answers 503 Service Unavailable during an outage, as an ingress does while the server restarts. The promotion
is the console command a team runs (``onevision promote``, its own process, the project's ``tracking.*`` retry
policy). A short outage is ridden out by MLflow's own HTTP retries; a long one, or a server that is gone, ends
with exit 4 and one line naming the server; nothing is registered or promoted by a failed run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from onevision.project import Project
from onevision.registry.model_registry import CHALLENGER
from tests.support.drill import count
from tests.support.projects import build_project
from tests.support.proxy import FaultProxy
from tests.support.stack import free_port, server_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
UNAVAILABLE = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "upstream restarting"}'


class OutageProxy(FaultProxy):
    """Relays to an MLflow server; ``outage(seconds, after=PATTERN)`` answers 503 to every request from the first
    one whose path matches PATTERN for ``seconds`` (``None``: until :meth:`restore`)."""

    def __init__(self, upstream: str):
        self.pattern: re.Pattern | None = None
        self.seconds: float | None = None
        self.started: float | None = None
        self.injected = 0
        self.paths: list[str] = []
        self.lock = threading.Lock()
        super().__init__(upstream)

    def outage(self, seconds: float | None, after: str = "") -> None:
        with self.lock:
            self.pattern, self.seconds, self.started, self.injected, self.paths = re.compile(after), seconds, None, 0, []

    def restore(self) -> None:
        with self.lock:
            self.pattern = None

    def fault(self, method: str, path: str) -> tuple[int, str, bytes] | None:
        with self.lock:
            self.paths.append(path)
            if self.pattern is None:
                return None
            if self.started is None:
                if not self.pattern.search(path):
                    return None
                self.started = time.monotonic()
            if self.seconds is not None and time.monotonic() - self.started > self.seconds:
                self.pattern = None
                return None
            self.injected += 1
            count("faults.tracking_server")
            return 503, "application/json", UNAVAILABLE


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, isolated_state):
    """A real MLflow tracking server behind an :class:`OutageProxy`."""
    state = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}", "--artifacts-destination", str(state / "artifacts")]
    with server_process("MLflow server", cmd, state / "mlflow.log", env, health=f"http://127.0.0.1:{port}/health", cwd=state):
        proxy = OutageProxy(f"http://127.0.0.1:{port}")
        yield proxy
        proxy.close()


@pytest.fixture
def project(tmp_path, tracking) -> Path:
    return build_project(tmp_path / "project", "tiny-trained", overrides=[
        f"tracking.tracking_uri={tracking.url}", "tracking.max_attempts=4", "tracking.backoff_factor=1"]).root


def promote(project: Path, prefect_api: str) -> subprocess.CompletedProcess:
    """``onevision promote`` as a user runs it: the console script, its own process, a shared Prefect server."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    for key in [k for k in env if k.startswith("MLFLOW_HTTP_REQUEST_")]:
        del env[key]  # the project's tracking.* policy, not whatever this test process exported
    return subprocess.run([str(BIN / "onevision"), "promote", "--root", str(project)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def prefect_api(prefect_server) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def state_of(project: Path) -> tuple[list[str], dict[str, str], int]:
    """(version numbers, aliases, audit records) of the project's registered model."""
    reg = Project.open(project).registry()
    try:
        versions = [v.version for v in reg.versions()]
    except Exception:  # noqa: BLE001 - no registered model yet
        return [], {}, 0
    return versions, reg.aliases(), len(reg.audit_log())


def test_a_tracking_server_down_for_a_while_is_ridden_out(project, tracking, prefect_api):
    """Down for 5 s just as the version is registered: MLflow's retries (tracking.max_attempts=4: waits of about
    0, 2, 4 s) carry the promotion through; exactly one version, waiting for a reviewer as challenger."""
    before, _, _ = state_of(project)
    tracking.outage(5.0, after=r"/model-versions/create")
    t0 = time.monotonic()
    result = promote(project, prefect_api)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert tracking.injected >= 2, tracking.paths  # the outage really hit requests, which were retried
    assert time.monotonic() - t0 >= 5.0
    versions, aliases, _ = state_of(project)
    assert len(versions) == len(before) + 1
    assert aliases.get(CHALLENGER) == max(versions, key=int)
    assert "champion" not in aliases


@pytest.mark.parametrize("after", ["", r"/model-versions/create"], ids=["from-the-first-request", "at-registration"])
def test_a_tracking_server_that_stays_down_fails_clearly_and_registers_nothing(after, project, tracking, prefect_api):
    """503 for good (from the first request, or once the model is logged and the version is being created):
    exit 4 after the configured attempts, one line naming the server, no traceback; once the server is back,
    the registry holds no new version, no alias moved and no audit record was written."""
    tracking.restore()
    before = state_of(project)
    tracking.outage(None, after=after)
    try:
        t0 = time.monotonic()
        result = promote(project, prefect_api)
        elapsed = time.monotonic() - t0
    finally:
        tracking.restore()
    output = result.stdout + result.stderr
    assert result.returncode == 4, output[-3000:]
    assert tracking.injected >= 4, tracking.paths  # 4 attempts per request (tracking.max_attempts)
    line = next(ln for ln in output.splitlines() if ln.startswith("error:"))
    assert f"MLflow tracking server {tracking.url}" in line and "after 4 attempts" in line, line
    assert "kept answering with errors" in line and "curl" in line, line
    assert "Traceback" not in result.stderr.split("error:")[-1] and " object at 0x" not in line
    assert elapsed < 120
    assert state_of(project) == before


def test_a_tracking_server_that_is_gone_is_named_with_exit_4(tmp_path, isolated_state):
    """Nothing listens at the tracking URI (connection refused): `onevision models` ends with exit 4 and the cause."""
    gone = f"http://127.0.0.1:{free_port()}"
    project = build_project(tmp_path / "project", "tiny-trained", overrides=[
        f"tracking.tracking_uri={gone}", "tracking.max_attempts=2", "tracking.backoff_factor=0"]).root
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    result = subprocess.run([str(BIN / "onevision"), "models", "--root", str(project)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"MLflow tracking server {gone} is unavailable after 2 attempts (connection refused" in result.stderr, result.stderr
