"""`retrain --push`: dvc push to the project's default remote, with a clear error when there is none or it fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onevision.pipeline import PushFailed, _without_userinfo, push_outputs

DVC = str(Path(sys.executable).parent / "dvc")


@pytest.fixture
def repo(tmp_path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_no_remote_names_the_command_that_adds_one(repo):
    with pytest.raises(PushFailed, match="dvc remote add -d"):
        push_outputs(repo)


def test_a_failing_push_names_the_remote_and_keeps_credentials_out(repo):
    subprocess.run([DVC, "remote", "add", "-d", "web", "http://user:hunter2@127.0.0.1:9/store"], cwd=repo, check=True)
    (repo / "a.txt").write_text("x")
    subprocess.run([DVC, "add", "a.txt"], cwd=repo, check=True, capture_output=True)
    with pytest.raises(PushFailed) as err:
        push_outputs(repo)
    assert "remote 'web'" in str(err.value) and "hunter2" not in str(err.value)


def test_userinfo_is_dropped_from_urls():
    assert _without_userinfo("https://u:p@host:1/x") == "https://host:1/x"
    assert _without_userinfo("s3://bucket/store") == "s3://bucket/store"
