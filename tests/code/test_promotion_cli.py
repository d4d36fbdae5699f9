"""Promotion and serving commands: help everywhere, refusals before any registry work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from onevision.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.mark.parametrize("command", ["promote", "approve", "reject", "rollback", "models", "audit", "search"])
def test_commands_have_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.fixture
def project(tmp_path):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_no_reviewers_configured_blocks_approval(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["overrides"] = {"registry": {"reviewers": []}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["approve", "1", "--reviewer", "alice", "--reason", "ok", "--root", str(project)])
    assert result.exit_code == 2 and "no reviewers are configured" in result.output
    assert not (project / "mlflow.db").exists()  # refused before touching the registry


def test_unknown_reviewer_is_refused(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["overrides"] = {"registry": {"reviewers": ["alice"]}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["reject", "3", "--reviewer", "mallory", "--reason", "no", "--root", str(project)])
    assert result.exit_code == 2 and "'mallory' is not a reviewer (registry.reviewers: alice)" in result.output


def test_promote_refuses_an_unknown_approval_mode(project):
    result = runner.invoke(app, ["promote", "--approval", "maybe", "--root", str(project)])
    assert result.exit_code == 2 and "--approval must be" in result.output
