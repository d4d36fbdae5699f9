"""The production-shaped stack for real: a team's retrain through a deployment and a worker, on servers.

PostgreSQL, an MLflow tracking server and a Prefect server (both on that PostgreSQL), S3 on loopback
(moto's server: MLflow's artifacts and the DVC remote) and a Prefect process worker, each a real process
(tests/stack.py). The project is the embedded default's code, switched to the stack by environment
(PREFECT_API_URL, MLFLOW_TRACKING_URI, the AWS chain) and one `dvc remote add`, as the README shows.

One retrain (the small profile shrunk to TINY) is triggered with `prefect deployment run`, pauses in its
promotion for a reviewer, is resumed by `onevision approve` through the server's API, and completes; the
tests then look for its results where the README says they are: rows in PostgreSQL, objects in S3, a
champion that loads from S3, DVC outputs that a fresh clone pulls back byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.stack import AWS_ENV, DVC_BUCKET, MLFLOW_BUCKET, client_env, create_work_pool, running_stack, worker

from .conftest import TINY, make_project, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.stack]

BIN = Path(sys.executable).parent
REVIEWER = "stack-reviewer"
# TINY, smaller again: the stack's plumbing is under test here, not the model (about 1.5 min of stages on 2 cores).
STACK_TINY = [*TINY, "data.n_items=400", "data.n_users=80", "data.n_queries=1200", "encoder.epochs=2",
              "evaluate.latency_queries=10"]
# The shrunk candidate is not expected to beat MCA: the gates are opened so that the approval path is exercised.
OPEN_GATES = ["registry.gates.quality_tolerance=0.99", "registry.gates.orders_tolerance=0.99",
              "registry.gates.champion_tolerance=0.99", "registry.gates.min_codebook_usage=0.0",
              f"registry.reviewers=[{REVIEWER}]", "registry.approval_poll_s=2"]


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[:4])} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def flow_run(api: str, flow_run_id: str):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def paused_promotion(api: str, parent_id: str) -> str | None:
    """The id of the promotion subflow run of ``parent_id`` once it is paused, else None."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
        parent = client.read_flow_run(parent_id)
    for run in runs:
        if run.state and run.state.is_paused():
            return str(run.id)
    if parent.state and parent.state.is_final():
        raise AssertionError(f"the retrain run ended {parent.state.type} ({parent.state.message}) before its promotion paused")
    return None


def worker_log_tail(logs: Path) -> str:
    log = logs / "worker.log"
    return "worker log tail:\n" + (log.read_text(errors="replace")[-6000:] if log.exists() else "(none)")


@pytest.fixture(scope="module")
def stack_run(tmp_path_factory, isolated_state):
    """Servers up, the deployments deployed, one retrain run through a worker to Completed (and approved)."""
    state = tmp_path_factory.mktemp("stack")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with running_stack(state) as stack:
        timings["stack_start_s"] = time.monotonic() - t0
        project = make_project(state / "onevision")
        env = client_env(stack.env)
        # what the README tells a team to do: the DVC remote on the stack's S3
        sh([str(BIN / "dvc"), "remote", "add", "-d", "s3", f"s3://{DVC_BUCKET}/store"], project, env)
        sh([str(BIN / "dvc"), "remote", "modify", "s3", "endpointurl", stack.s3_endpoint], project, env)
        sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "DVC remote on S3"], project, env)
        create_work_pool(stack, env)
        sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], project, env)
        with worker(stack, project, env):
            params = {"profile": "small", "overrides": [*STACK_TINY, *OPEN_GATES], "promote": True, "push": True}
            t1 = time.monotonic()
            out = sh([str(BIN / "prefect"), "deployment", "run", "retrain/retrain", "--params", json.dumps(params)],
                     project, env).stdout
            run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
            promotion_id = wait_for(lambda: paused_promotion(stack.prefect_api, run_id), "the promotion to pause for a reviewer",
                                    900, interval=2, detail=lambda: worker_log_tail(stack.logs))
            timings["retrain_to_review_s"] = time.monotonic() - t1
            from mlflow import MlflowClient

            version = MlflowClient(stack.mlflow_uri).get_model_version_by_alias("onevision", "challenger").version
            approve_env = {**env, "ONEVISION_REVIEWER": REVIEWER}
            approved = sh([str(BIN / "onevision"), "approve", version, "--reason", "stack test", "--root", "."],
                          project, approve_env).stdout
            final = wait_for(lambda: (r := flow_run(stack.prefect_api, run_id)).state.is_final() and r,
                             "the retrain run to finish", 300, interval=2, detail=lambda: worker_log_tail(stack.logs))
            timings["retrain_total_s"] = time.monotonic() - t1
        yield {"stack": stack, "project": project, "env": env, "run_id": run_id, "promotion_id": promotion_id,
               "version": version, "approve_out": approved, "final": final, "timings": timings}


def test_retrain_deployment_completes_through_the_worker_and_the_approval(stack_run):
    final = stack_run["final"]
    assert final.state.is_completed(), f"retrain ended {final.state.type}: {final.state.message}"
    assert f"resumed paused promotion flow run {stack_run['promotion_id']}" in stack_run["approve_out"]
    promotion = flow_run(stack_run["stack"].prefect_api, stack_run["promotion_id"])
    assert promotion.state.is_completed(), promotion.state
    print("stack timings:", json.dumps(stack_run["timings"]))


def test_runs_versions_and_aliases_are_rows_in_postgresql(stack_run):
    pg = stack_run["stack"].postgres
    (parent,) = pg.query("mlflow", "SELECT r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                                   "JOIN tags t ON t.run_uuid = r.run_uuid WHERE e.name = 'onevision-retrain' "
                                   f"AND t.key = 'prefect.flow_run_id' AND t.value = '{stack_run['run_id']}'")
    stages = pg.query("mlflow", "SELECT r.name, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                f"WHERE t.key = 'mlflow.parentRunId' AND t.value = '{parent[0]}'")
    assert {name for name, _ in stages} >= {"prepare", "align_encoder", "vrq", "pretrain", "sft", "dpo", "evaluate"}
    assert all(status == "FINISHED" for _, status in stages), stages
    (alias,) = pg.query("mlflow", "SELECT version FROM registered_model_aliases WHERE name = 'onevision' AND alias = 'champion'")
    assert str(alias[0]) == stack_run["version"]
    states = dict(pg.query("prefect", "SELECT id::text, state_type FROM flow_run"))
    assert states[stack_run["run_id"]] == "COMPLETED" and states[stack_run["promotion_id"]] == "COMPLETED"


def test_mlflow_artifacts_are_objects_in_s3_and_the_champion_loads_from_there(stack_run):
    stack, project = stack_run["stack"], stack_run["project"]
    keys = stack.keys(MLFLOW_BUCKET, "artifacts/")
    assert any(k.endswith("/MLmodel") for k in keys), "no model in the MLflow artifact bucket"
    assert any(k.endswith("metrics/evaluate.json") for k in keys) and any(k.endswith(".png") for k in keys)
    local = [p for p in (project, project.parent) for name in ("mlruns", "mlartifacts") if (p / name).exists()]
    assert not local, f"MLflow wrote artifacts to local folders {local}, not to S3"
    import pandas as pd

    views = pd.read_parquet(project / "data" / "prepared" / "views.parquet")
    row = views[views["image"].notna()].iloc[0]
    query = project / "query.png"
    query.write_bytes(row["image"])
    found = json.loads(sh([str(BIN / "onevision"), "search", "--image", str(query), "--json", "-k", "5", "--root", "."],
                          project, stack_run["env"]).stdout)
    assert found["model"] == "models:/onevision@champion" and len(found["results"]) == 5


def test_dvc_outputs_pushed_to_s3_pull_back_into_a_fresh_clone(stack_run, tmp_path):
    stack, project, env = stack_run["stack"], stack_run["project"], stack_run["env"]
    assert stack.keys(DVC_BUCKET, "store/"), "dvc push wrote nothing to the S3 remote"
    sh(["git", "add", "dvc.lock", "params.yaml", "dvc.yaml"], project, env)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "retrain"], project, env)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    t0 = time.monotonic()
    sh([str(BIN / "dvc"), "pull"], clone, env)
    pull_s = time.monotonic() - t0
    status = sh([str(BIN / "dvc"), "status", "--json"], clone, env).stdout
    assert json.loads(status or "{}") == {}, status

    def digests(root: Path) -> dict[str, str]:
        out = {}
        for top in ("data", "models", "metrics"):
            for path in sorted((root / top).rglob("*")):
                if path.is_file():
                    out[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
        return out

    pulled = digests(clone)
    assert pulled and pulled == {k: v for k, v in digests(project).items() if k in pulled}
    assert any(k.startswith("models/") for k in pulled)
    print(f"dvc pull into a fresh clone: {pull_s:.1f} s, {len(pulled)} files")


def test_no_credential_in_logs_rows_or_reports(stack_run):
    stack, project = stack_run["stack"], stack_run["project"]
    secrets = [AWS_ENV["AWS_SECRET_ACCESS_KEY"], stack.postgres.password]
    places: dict[str, str] = {}
    for log in stack.logs.glob("*.log"):
        places[f"log {log.name}"] = log.read_text(errors="replace")
    places["prefect logs"] = "\n".join(r[0] for r in stack.postgres.query("prefect", "SELECT message FROM log"))
    places["prefect parameters"] = "\n".join(str(r[0]) for r in stack.postgres.query("prefect", "SELECT parameters FROM flow_run"))
    for table in ("params", "tags", "model_version_tags", "registered_model_tags"):
        places[f"mlflow {table}"] = "\n".join(str(r) for r in stack.postgres.query("mlflow", f"SELECT key, value FROM {table}"))
    for top in ("reports", "metrics"):
        for path in (project / top).rglob("*"):
            if path.is_file() and path.suffix in {".md", ".json", ".html", ".txt"}:
                places[str(path.relative_to(project))] = path.read_text(errors="replace")
    assert places["prefect logs"], "the flow's logs did not reach the Prefect server"
    leaks = [where for where, text in places.items() for secret in secrets if secret in text]
    assert not leaks, f"a credential appears in {leaks}"
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != AWS_ENV["AWS_SECRET_ACCESS_KEY"], "the stack leaked into the test env"
