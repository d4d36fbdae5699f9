"""Fixtures for integration tests: a throwaway project checkout and a shared Prefect server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import REPO
from tests.support.defaults import write_defaults

# What a project checkout needs for the pipeline: code (dvc.yaml hashes it), params, stage graph, DVC config;
# params.yaml and dvc.yaml as their defaults, not as the last retrain in this checkout left them (tests/support/defaults.py).
PROJECT_FILES = ("prefect.yaml", ".dvcignore", ".gitignore")
DEFAULT_FILES = ("params.yaml", "dvc.yaml")
PROJECT_DIRS = ("onevision", "flows", "tasks")

# The small profile, shrunk so that the whole flow takes a few minutes on 2 cores.
TINY = [
    "data.n_items=800",
    "data.n_users=150",
    "data.n_queries=2500",
    "encoder.epochs=3",
    "vrq.codebook_sizes=[64, 32, 16]",
    "vrq.epochs=5",
    "mca.recall_k=200",
    "mca.prerank_k=50",
    "generative.pretrain.epochs=2",
    "generative.sft.epochs=1",
    "generative.dpo.epochs=1",
    "generative.decode.beam_width=100",
    "evaluate.latency_queries=20",
    "evaluate.warmup=5",
    "evaluate.bootstrap=50",
    "pruning.visual_keep_mass=[1.0]",
    "pruning.beam_margin=[null, 2.0]",
    "pruning.level_beam_widths=[null]",
    "pruning.val_queries=100",
    "pruning.test_queries=100",
    "pruning.latency_queries=10",
    "pruning.warmup=2",
]


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


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


def make_project(dest: Path) -> Path:
    """Copy the project into ``dest`` as a fresh git + DVC repository with a local remote."""
    dest.mkdir(parents=True, exist_ok=True)
    write_defaults(dest, DEFAULT_FILES)
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    bin_dir = Path(sys.executable).parent
    _run(["git", "init", "-q", "-b", "main"], dest)
    _run([str(bin_dir / "dvc"), "init", "-q"], dest)
    shutil.copy2(REPO / ".dvc" / "config", dest / ".dvc" / "config")
    _run(["git", "add", "-A"], dest)
    _run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "init"], dest)
    return dest


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
