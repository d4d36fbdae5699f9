"""Promotion and serving commands: help everywhere, refusals before any registry work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from onevision.app.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["promote", "approve", "reject", "rollback", "models", "audit", "search", "serve"])
def test_commands_have_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_no_reviewers_configured_blocks_approval(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["overrides"] = {"registry": {"reviewers": []}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["approve", "1", "--reviewer", "alice", "--reason", "ok", "--root", str(project)], env={"ONEVISION_REVIEWER": "alice"})
    assert result.exit_code == 2 and "no reviewers are configured" in result.output
    assert not (project / "mlflow.db").exists()  # refused before touching the registry


def test_unknown_reviewer_is_refused(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["overrides"] = {"registry": {"reviewers": ["alice"]}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["reject", "3", "--reviewer", "mallory", "--reason", "no", "--root", str(project)], env={"ONEVISION_REVIEWER": "mallory"})
    assert result.exit_code == 2 and "'mallory' is not a reviewer (registry.reviewers: alice)" in result.output


def test_promote_refuses_an_unknown_approval_mode(project):
    result = runner.invoke(app, ["promote", "--approval", "maybe", "--root", str(project)])
    assert result.exit_code == 2 and "--approval must be" in result.output


# --------------------------------------------------------------------------- messages that say what to do


@pytest.fixture
def registry_project(project, monkeypatch):
    """The project with reviewer alice and an empty local SQLite registry (no server, no model files)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["overrides"] = {"registry": {"reviewers": ["alice"]}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    return project


def client(project: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def query_photo(project: Path) -> Path:
    from onevision.data.images import encode_png

    path = project / "query.png"
    path.write_bytes(encode_png(np.zeros((28, 28), np.uint8)))
    return path


def test_search_without_a_champion_says_how_to_get_one(registry_project):
    result = runner.invoke(app, ["search", "--image", str(query_photo(registry_project)), "--root", str(registry_project)])
    assert result.exit_code == 2, result.output
    out = result.output
    assert "Traceback" not in out and "no champion yet: model 'onevision' has no 'champion' alias" in out
    assert "onevision promote" in out and "onevision approve VERSION --reason TEXT" in out
    assert "--project DIR" in out and "no version of 'onevision' is registered yet" in out


def test_search_without_a_champion_lists_the_versions_to_search(registry_project):
    registry = client(registry_project)
    registry.create_registered_model("onevision")
    for status in ("gates-failed", "awaiting-approval"):
        registry.create_model_version("onevision", source=str(registry_project), tags={"status": status})
    result = runner.invoke(app, ["search", "--image", str(query_photo(registry_project)), "--root", str(registry_project)])
    assert result.exit_code == 2, result.output
    assert "--model models:/onevision/2   # versions: 2 (awaiting-approval), 1 (gates-failed)" in result.output
    assert "Traceback" not in result.output


def test_approving_a_gates_failed_version_says_where_its_gate_report_is(registry_project):
    registry = client(registry_project)
    registry.create_registered_model("onevision")
    artifact = "runs:/0123abcd/gate_report/gate_report.md"
    registry.create_model_version("onevision", source=str(registry_project), tags={
        "status": "gates-failed", "gates.passed": "false", "gates.failed": "baseline.hr@10,champion.hr@10", "gate_report": artifact,
    })
    report = registry_project / "reports" / "gate_report.md"
    report.parent.mkdir()
    report.write_text("# Gate report: `onevision` version 1\n\nVerdict: **FAILED**\n")
    result = runner.invoke(app, ["approve", "1", "--reviewer", "alice", "--reason", "ship it", "--root", str(registry_project)], env={"ONEVISION_REVIEWER": "alice"})
    assert result.exit_code == 2, result.output
    out = result.output
    assert "not awaiting approval (status: gates-failed)" in out and "failed gates: baseline.hr@10, champion.hr@10" in out
    assert f"gate report: {report.resolve()}" in out and f"gate report in MLflow: {artifact}" in out
    assert f"mlflow artifacts download -u {artifact}" in out and "cannot be approved" in out and "onevision promote" in out
    # A local report of another version is not offered as this version's.
    report.write_text("# Gate report: `onevision` version 2\n")
    result = runner.invoke(app, ["approve", "1", "--reviewer", "alice", "--reason", "ship it", "--root", str(registry_project)], env={"ONEVISION_REVIEWER": "alice"})
    assert "gate report: " + str(report.resolve()) not in result.output and f"gate report in MLflow: {artifact}" in result.output


def test_serve_without_a_champion_says_how_to_get_one_and_what_to_serve(registry_project):
    registry = client(registry_project)
    registry.create_registered_model("onevision")
    registry.create_model_version("onevision", source=str(registry_project), tags={"status": "awaiting-approval"})
    result = runner.invoke(app, ["serve", "--root", str(registry_project)])
    assert result.exit_code == 2, result.output
    out = result.output
    assert "Traceback" not in out and "no champion yet" in out and "onevision promote" in out
    assert "onevision serve --model models:/onevision/1   # versions: 1 (awaiting-approval)" in out


def test_serve_pins_the_approved_champion_version(registry_project):
    from onevision.project import Project
    from onevision.promotion.workflow import approve

    registry = client(registry_project)
    registry.create_registered_model("onevision")
    registry.create_model_version("onevision", source=str(registry_project), tags={"status": "awaiting-approval", "gates.passed": "true"})
    approve(Project.open(registry_project), version="1", reviewer="alice", reason="passed every gate")
    result = runner.invoke(app, ["serve", "--print-command", "--port", "5099", "--root", str(registry_project)])
    assert result.exit_code == 0, result.output
    assert "models serve -m models:/onevision/1 --env-manager local -h 127.0.0.1 -p 5099" in result.output
    # the alias moved by hand: refused
    registry.create_model_version("onevision", source=str(registry_project), tags={"status": "gates-failed"})
    registry.set_registered_model_alias("onevision", "champion", "2")
    refused = runner.invoke(app, ["serve", "--print-command", "--root", str(registry_project)])
    assert refused.exit_code == 2 and "champion v2" in refused.output
    assert str(Project.open(registry_project).registry().by_alias("champion").version) == "2"


# --------------------------------------------------------------------------- who decides


def test_naming_another_reviewer_is_refused(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["overrides"] = {"registry": {"reviewers": ["alice", "bob"]}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["approve", "1", "--reviewer", "alice", "--reason", "ok", "--root", str(project)],
                           env={"ONEVISION_REVIEWER": "bob"})
    assert result.exit_code == 2, result.output
    assert "you are 'bob' (from $ONEVISION_REVIEWER), but --reviewer says 'alice'" in result.output
    assert "Traceback" not in result.output and not (project / "mlflow.db").exists()
    result = runner.invoke(app, ["rollback", "--by", "alice", "--reason", "x", "--root", str(project)], env={"ONEVISION_REVIEWER": "bob"})
    assert result.exit_code == 2 and "you are 'bob'" in result.output


def test_the_reviewer_is_who_runs_the_command(registry_project, monkeypatch):
    registry = client(registry_project)
    registry.create_registered_model("onevision")
    registry.create_model_version("onevision", source=str(registry_project), tags={"status": "awaiting-approval", "gates.passed": "true"})
    # No $ONEVISION_REVIEWER: the login name decides, and "mallory" is not a listed reviewer.
    monkeypatch.delenv("ONEVISION_REVIEWER", raising=False)
    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    refused = runner.invoke(app, ["approve", "1", "--reason", "ship it", "--root", str(registry_project)])
    assert refused.exit_code == 2 and "'mallory' is not a reviewer" in refused.output
    result = runner.invoke(app, ["approve", "1", "--reason", "ship it", "--root", str(registry_project)], env={"ONEVISION_REVIEWER": "alice"})
    assert result.exit_code == 0, result.output
    from onevision.project import Project

    record = Project.open(registry_project).registry().audit_log()[-1]
    assert (record["by"], record["identity"]) == ("alice", "$ONEVISION_REVIEWER")
