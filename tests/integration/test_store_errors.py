"""Clear errors from the object store on real loopback endpoints: a missing bucket, rejected credentials and an
unreachable endpoint, for our own S3 client and for MLflow's artifact store alike; no credential in any message."""

from __future__ import annotations

import os
import time

import pytest

from onevision.storage.s3 import ObjectStore, StoreError, retry_environment
from onevision.tracking import ArtifactStoreError, Tracker
from tests.integration.conftest import moto_s3
from tests.support.stack import BIN, free_port, server_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUCKET = "onevision-errors"
SECRET = "canary-secret-" + "q" * 20


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture
def strict_s3(tmp_path):
    """A moto server that checks credentials (IAM enforced from the first request): any unknown key is refused."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    with server_process("S3 (moto, IAM enforced)", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                        tmp_path / "moto.log", env, health=f"http://127.0.0.1:{port}/moto-api/"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def canary_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACANARY0000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _clear(message: str) -> None:
    assert "Traceback" not in message and SECRET not in message and "AKIACANARY" not in message, message
    assert len(message) < 500, message


def test_a_missing_bucket_is_named_with_the_command_that_creates_it(s3):
    with pytest.raises(StoreError) as err:
        ObjectStore("no-such-bucket", endpoint_url=s3, max_attempts=2).check()
    assert "bucket 'no-such-bucket' does not exist" in str(err.value) and "aws s3 mb" in str(err.value)
    _clear(str(err.value))
    ObjectStore(BUCKET, endpoint_url=s3).check()  # the real one passes


def test_rejected_credentials_say_so_without_showing_them(strict_s3, canary_credentials):
    with pytest.raises(StoreError) as err:
        ObjectStore(BUCKET, endpoint_url=strict_s3, max_attempts=2).check()
    assert "rejected the credentials" in str(err.value) and "values not shown" in str(err.value)
    _clear(str(err.value))


def test_an_unreachable_endpoint_fails_after_the_configured_attempts(canary_credentials):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(StoreError) as err:
        ObjectStore(BUCKET, endpoint_url=closed, max_attempts=3, connect_timeout_s=1).check()
    assert "unreachable" in str(err.value) and closed in str(err.value)
    assert time.perf_counter() - t0 < 60  # retried with backoff, then a clear failure, not a hang
    _clear(str(err.value))


def _tracker_on(tmp_path, artifact_root: str) -> tuple[Tracker, str]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("errors", artifact_location=artifact_root)
    tracker = Tracker(tmp_path, "errors", uri, retry_environment(2))
    return tracker, tracker.start_parent("run", {}, {"seed": 0})


@pytest.mark.parametrize("case", ["missing bucket", "unreachable endpoint", "credentials rejected"])
def test_mlflow_artifacts_on_s3_fail_with_the_cause(case, s3, tmp_path, monkeypatch, request):
    if case == "credentials rejected":
        endpoint, bucket = request.getfixturevalue("strict_s3"), BUCKET
        request.getfixturevalue("canary_credentials")
    elif case == "unreachable endpoint":
        endpoint, bucket = f"http://127.0.0.1:{free_port()}", BUCKET
    else:
        endpoint, bucket = s3, "no-such-artifacts"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    tracker, run_id = _tracker_on(tmp_path, f"s3://{bucket}/artifacts")
    report = tmp_path / "report.md"
    report.write_text("# gate report\n")
    with pytest.raises(ArtifactStoreError) as err:
        tracker.log_artifact(run_id, report, "reports")
    message = str(err.value)
    assert message.startswith("MLflow could not store report.md (s3://"), message
    assert {"missing bucket": "does not exist", "unreachable endpoint": "unreachable",
            "credentials rejected": "rejected the credentials"}[case] in message, message
    _clear(message)


def test_mlflow_artifacts_on_s3_round_trip(s3, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3)
    tracker, run_id = _tracker_on(tmp_path, f"s3://{BUCKET}/artifacts")
    report = tmp_path / "report.md"
    report.write_text("# gate report\n")
    tracker.log_artifact(run_id, report, "reports")
    back = MlflowClient(tracker.uri).download_artifacts(run_id, "reports/report.md", str(tmp_path / "back"))
    assert open(back).read() == "# gate report\n"
    assert os.environ["AWS_RETRY_MODE"] == "standard"  # MLflow's own boto3 client retries with backoff too
