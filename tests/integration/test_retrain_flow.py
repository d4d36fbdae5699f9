"""The retrain flow end to end on the small profile: Prefect runs, DVC decides, MLflow records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
STAGES = ["prepare", "validate", "split"]


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=project, capture_output=True, text=True, env=env)


def mlflow_runs(project: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("onevision-retrain")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id] for p in parents}
    return parents, children


@pytest.fixture(scope="module")
def first_run(small_project, prefect_server):
    from tests.support.flows import load

    retrain = load("retrain.py:retrain")

    outcomes = retrain(root=str(small_project), profile="small", until="split")
    return small_project, outcomes


def test_first_run_executes_every_stage(first_run):
    project, outcomes = first_run
    assert [o["stage"] for o in outcomes] == STAGES
    assert not any(o["skipped"] for o in outcomes)
    for stage in STAGES:
        metrics = json.loads((project / "metrics" / f"{stage}.json").read_text())
        assert metrics, stage
    assert json.loads((project / "metrics/prepare.json").read_text())["rows_items"] == 2000
    assert (project / "data/splits/assignment.parquet").exists()
    assert yaml.safe_load((project / "params.yaml").read_text())["profile"] == "small"


def test_mlflow_has_parent_with_nested_stage_runs(first_run):
    project, _ = first_run
    parents, children = mlflow_runs(project)
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["profile"] == "small"
    assert len(parent.data.tags["git_revision"]) >= 40
    assert {f"dvc.{s}.deps_hash" for s in STAGES} <= set(parent.data.tags)
    nested = {r.data.tags["stage"]: r for r in children[parent.info.run_id]}
    assert set(nested) == set(STAGES)
    assert nested["prepare"].data.params["data.n_items"] == "2000"
    assert nested["validate"].data.metrics["tables.items.rows"] == 2000
    assert nested["validate"].data.metrics["passed"] == 1.0
    assert nested["split"].data.metrics["queries_test"] > 0
    assert all(r.data.tags["skipped"] == "false" for r in nested.values())


def test_rerun_with_no_change_skips_every_stage(first_run, prefect_server):
    from tests.support.flows import load

    retrain = load("retrain.py:retrain")

    project, _ = first_run
    outcomes = retrain(root=str(project), until="split")
    assert [o["skipped"] for o in outcomes] == [True, True, True]
    parents, children = mlflow_runs(project)
    assert parents[-1].data.tags["stages_skipped"] == ",".join(STAGES)
    assert all(r.data.tags["skipped"] == "true" for r in children[parents[-1].info.run_id])


def test_param_change_reruns_only_the_dependent_stage(first_run, prefect_server):
    from tests.support.flows import load

    retrain = load("retrain.py:retrain")

    project, _ = first_run
    outcomes = retrain(root=str(project), overrides=["split.test_fraction=0.15"], until="split")
    assert {o["stage"]: o["skipped"] for o in outcomes} == {"prepare": True, "validate": True, "split": False}
    assert json.loads((project / "metrics/split.json").read_text())["queries_test"] == 900


def test_dvc_repro_alone_reproduces_the_same_outputs(first_run):
    project, _ = first_run
    before = (project / "dvc.lock").read_text()
    assert "didn't change" in dvc(project, "repro", "split").stdout
    for path in ("data", "metrics", "reports"):
        subprocess.run(["rm", "-rf", str(project / path)], check=True)
    proc = dvc(project, "repro", "split")  # the stages this test's flow ran
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (project / "dvc.lock").read_text() == before  # same bytes, same hashes
    assert dvc(project, "status", "--json", "--with-deps", "split").stdout.strip() in ("{}", "")


def test_dvc_push_and_pull_with_the_default_local_remote(first_run):
    project, _ = first_run
    proc = dvc(project, "push", "--with-deps", "split")
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["rm", "-rf", str(project / "data"), str(project / ".dvc" / "cache")], check=True)
    proc = dvc(project, "pull", "--with-deps", "split")
    assert proc.returncode == 0, proc.stderr
    assert (project / "data/validated/items.parquet").exists()
    assert dvc(project, "status", "--json", "--with-deps", "split").stdout.strip() in ("{}", "")
