"""Fixtures for integration tests: a throwaway project checkout and a shared Prefect server."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.projects import TINY_FLOW, build_project

TINY = TINY_FLOW  # the small profile shrunk for the whole flow (test_stack.py imports it from here)


def wait_for(predicate, what: str, timeout: float = 180.0, interval: float = 0.3,
             detail: Callable[[], str] | None = None):
    """Poll ``predicate`` until it returns something truthy (returned); on timeout fail naming ``what`` (and ``detail()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{detail()}" if detail else ""))


def make_project(dest: Path) -> Path:
    """A project checkout in ``dest``: a fresh git + DVC repository with a local remote (``build_project``'s
    "checkout")."""
    return build_project(dest, "checkout").root


@pytest.fixture(scope="session")
def isolated_state(tmp_path_factory):
    """Point Prefect, DVC and MLflow state at a temp folder for the whole session."""
    state = tmp_path_factory.mktemp("state")
    env = {
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "DVC_SITE_CACHE_DIR": str(state / "dvc-site"),
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "onevision",
    }
    with pytest.MonkeyPatch.context() as mp:  # put the environment back after the session
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield state


@pytest.fixture(scope="session")
def prefect_server(isolated_state):
    """One temporary Prefect server for the session (start-up costs ~15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def small_project(tmp_path_factory, isolated_state) -> Path:
    """A project checkout shared by the integration tests that run the small profile."""
    return make_project(tmp_path_factory.mktemp("project") / "onevision")


@contextmanager
def moto_s3(bucket: str):
    """A real HTTP S3 endpoint on loopback (moto's server) with ``bucket``, and test credentials in the environment."""
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
            mp.setenv(key, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="session")
def tiny_full_run(tmp_path_factory, isolated_state, prefect_server):
    """The whole retrain flow on the shrunk small profile (TINY), once per session: what the pipeline tests check
    and what the crash tests compare a crashed-and-resumed run with."""
    from tests.support.flows import load

    retrain = load("retrain.py:retrain")

    project = make_project(tmp_path_factory.mktemp("full") / "onevision")
    outcomes = retrain(root=str(project), profile="small", overrides=TINY)
    return project, outcomes
