"""CLI: help everywhere, config errors before any work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from onevision.app.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [[], ["retrain"], ["stage", "run"], ["data", "validate"], ["data", "import"], ["data", "build-demo"], ["config", "show"]],
)
def test_every_command_has_help(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_is_fast_and_imports_nothing_heavy():
    code = "import sys; from onevision.app.cli import app; print(sorted(m for m in ('torch','prefect','mlflow','evidently','dvc') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_retrain_refuses_unknown_override_before_starting(project):
    result = runner.invoke(app, ["retrain", "--root", str(project), "--set", "data.n_itemz=5"])
    assert result.exit_code == 2
    assert "unknown key 'data.n_itemz'" in result.output


def test_retrain_refuses_unknown_stage_and_profile(project):
    result = runner.invoke(app, ["retrain", "--root", str(project), "--until", "nope"])
    assert result.exit_code == 2 and "unknown stage 'nope'" in result.output
    result = runner.invoke(app, ["retrain", "--root", str(project), "--profile", "huge"])
    assert result.exit_code == 2 and "unknown profile 'huge'" in result.output


def test_config_show_applies_profile_and_set(project):
    result = runner.invoke(app, ["config", "show", "--root", str(project), "-p", "small", "-s", "data.n_users=12"])
    assert result.exit_code == 0, result.output
    assert '"n_users": 12' in result.output and '"n_items": 2000' in result.output


def test_config_docs_lists_every_section():
    result = runner.invoke(app, ["config", "docs"])
    assert result.exit_code == 0
    for key in ("data.n_items", "validate.max_bad_fraction", "split.strategy"):
        assert key in result.output


def test_stage_run_unknown_stage(project):
    result = runner.invoke(app, ["stage", "run", "nope", "--root", str(project)])
    assert result.exit_code == 2 and "unknown stage" in result.output
