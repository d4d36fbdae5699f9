"""The project context: opened once per command, its registry opened once (onevision/project.py)."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from onevision.app.cli import app
from onevision.project import Project
from tests.support.resolutions import count_resolutions

runner = CliRunner()


def test_open_resolves_the_root_config_and_tracking_uri(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(project)
    opened = Project.open(".", overrides=["seed=7"])
    assert opened.root == project.resolve() and opened.cfg.seed == 7
    assert opened.tracking_uri == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert opened.registry() is opened.registry() and opened.registry().tracking_uri == opened.tracking_uri


def reviewed_project(project: Path) -> Path:
    """Reviewer alice, and version 1 of the model waiting for approval in the project's SQLite registry."""
    from mlflow.tracking import MlflowClient

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["overrides"] = {"registry": {"reviewers": ["alice"]}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("onevision")
    client.create_model_version("onevision", source=str(project), tags={"status": "awaiting-approval", "gates.passed": "true"})
    return project


def test_approve_opens_the_project_once(project, monkeypatch):
    """`onevision approve`: params.yaml read once, the tracking URI resolved once, one registry (were 1, 2, 2)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = reviewed_project(project)
    import onevision.app.registry_cli  # noqa: F401 - counted below wherever it imported the functions
    import onevision.promotion.workflow  # noqa: F401

    counted = count_resolutions(monkeypatch)
    result = runner.invoke(app, ["approve", "1", "--reason", "ship it", "--root", str(root)], env={"ONEVISION_REVIEWER": "alice"})
    assert result.exit_code == 0, result.output
    assert counted == {"load_config": 1, "tracking_uri": 1, "ModelRegistry": 1}
