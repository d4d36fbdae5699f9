"""A copied or moved project works on its own: nothing is written into the folder it was copied from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onevision.project import Project
from onevision.promotion.workflow import approve, check_gates, register_candidate
from tests.support.projects import build_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def promote_and_approve(project: Path) -> str:
    opened = Project.open(project)
    version = register_candidate(opened).version
    assert check_gates(opened, version).passed
    approve(opened, version=version, reviewer="alice", reason="portable")
    return version


def test_a_copied_project_writes_only_into_itself(tmp_path, isolated_state, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original = build_project(tmp_path / "original", "tiny-trained").root
    first = promote_and_approve(original)  # the original has runs, a model version and artifacts
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(original, copy)
    before = snapshot(original)

    second = promote_and_approve(copy)
    assert snapshot(original) == before  # not one file added or changed in the original
    registry = Project.open(copy).registry()
    for version in (first, second):
        mv = registry.client.get_model_version("onevision", version)
        location = registry.client.get_run(mv.run_id).info.artifact_uri
        assert location.startswith(copy.resolve().as_uri()), location
    assert any((copy / "mlartifacts").rglob("gate_report.md"))

    shutil.rmtree(original)  # the copy does not need the original at all
    import mlflow

    from onevision.registry.model_registry import scoped_tracking_uri

    with scoped_tracking_uri(f"sqlite:///{copy / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model("models:/onevision@champion")
    assert model is not None
