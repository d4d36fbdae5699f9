"""The production-shaped stack for real: a team's retrain through a deployment and a worker, on servers.

PostgreSQL, an MLflow tracking server and a Prefect server (both on that PostgreSQL), S3 on loopback
(moto's server: MLflow's artifacts and the DVC remote) and a Prefect process worker, each a real process
(tests/support/stack.py). The project is the embedded default's code, switched to the stack by environment
(PREFECT_API_URL, MLFLOW_TRACKING_URI, the AWS chain) and one `dvc remote add`, as the README shows.

One retrain (the small profile shrunk to TINY) is triggered with `prefect deployment run`, pauses in its
promotion for a reviewer, is resumed by `onevision approve` through the server's API, and completes; the
tests then look for its results where the README says they are: rows in PostgreSQL, objects in S3, a
champion that loads from S3, DVC outputs that a fresh clone pulls back byte for byte.

Nothing is open (issue 35): the MLflow server authenticates every caller and the team's accounts and
permissions are set up with `onevision access setup` from the admin's shell, as docs/reviewers.md shows. The
retrain runs as the service account (the worker's environment); only the reviewer's account can approve,
set champion or roll back, and the server answers 403 to everyone else (the tests at the end hold that
matrix). Promotion events reach a webhook on loopback, signed.
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

from tests.support.stack import DVC_BUCKET, MLFLOW_BUCKET, create_work_pool, running_stack, worker
from tests.support.stack_accounts import (
    CANDIDATES,
    READER,
    REVIEWER,
    SERVICE,
    as_account,
    audit_records,
    password_env,
    play_matrix,
    s3_text,
)
from tests.support.webhook import receiver

from .conftest import TINY, make_project, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.stack]

BIN = Path(sys.executable).parent
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


def prefect_settings(stack) -> dict:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    return {PREFECT_API_URL: stack.prefect_api, PREFECT_API_AUTH_STRING: stack.prefect_auth}


def flow_run(stack, flow_run_id: str):
    from prefect import get_client
    from prefect.settings import temporary_settings

    with temporary_settings(prefect_settings(stack)), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def paused_promotion(stack, parent_id: str) -> str | None:
    """The id of the promotion subflow run of ``parent_id`` once it is paused, else None."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import temporary_settings

    with temporary_settings(prefect_settings(stack)), get_client(sync_client=True) as client:
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


def team_params(project: Path) -> None:
    """The project's params.yaml as a team on the shared stack has it: candidates apart, its reviewers listed."""
    params = project / "params.yaml"
    text = params.read_text()
    for old, new in (('  candidates_model: ""', f"  candidates_model: {CANDIDATES}"), ("  reviewers: [ml-reviewer]", f"  reviewers: [{REVIEWER}]")):
        assert old in text, old
        text = text.replace(old, new)
    params.write_text(text)


@pytest.fixture(scope="module")
def stack_run(tmp_path_factory, isolated_state):
    """Servers up, the team's accounts set up, the deployments deployed, one retrain run through a worker (as the
    service account) to Completed, approved by the reviewer's account."""
    state = tmp_path_factory.mktemp("stack")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with running_stack(state, team=(SERVICE, REVIEWER, READER)) as stack, receiver() as hooks:
        timings["stack_start_s"] = time.monotonic() - t0
        project = make_project(state / "onevision")
        team_params(project)
        # what docs/reviewers.md tells an admin to do, twice: the second run finds everything in place
        admin_env = {**stack.as_user(stack.admin[0]), **{password_env(u): pw for u, pw in stack.passwords.items()}}
        access = [sh([str(BIN / "onevision"), "access", "setup", "--service", SERVICE, "--reader", READER], project, admin_env).stdout
                  for _ in range(2)]
        checked = sh([str(BIN / "onevision"), "access", "check", "--service", SERVICE, "--reader", READER], project,
                     stack.as_user(stack.admin[0])).stdout
        # the worker (and `prefect deploy`, `dvc`) run as the service account; promotion events go to the hook
        env = {**stack.as_user(SERVICE), **hooks.env}
        # what the README tells a team to do: the DVC remote on the stack's S3
        sh([str(BIN / "dvc"), "remote", "add", "-d", "s3", f"s3://{DVC_BUCKET}/store"], project, env)
        sh([str(BIN / "dvc"), "remote", "modify", "s3", "endpointurl", stack.s3_endpoint], project, env)
        sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "DVC remote on S3, the team's registry"], project, env)
        create_work_pool(stack, env)
        sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], project, env)
        with worker(stack, project, env):
            params = {"profile": "small", "overrides": [*STACK_TINY, *OPEN_GATES], "promote": True, "push": True}
            t1 = time.monotonic()
            out = sh([str(BIN / "prefect"), "deployment", "run", "retrain/retrain", "--params", json.dumps(params)],
                     project, env).stdout
            run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
            promotion_id = wait_for(lambda: paused_promotion(stack, run_id), "the promotion to pause for a reviewer",
                                    900, interval=2, detail=lambda: worker_log_tail(stack.logs))
            timings["retrain_to_review_s"] = time.monotonic() - t1
            from mlflow import MlflowClient

            with as_account(stack, READER):
                version = MlflowClient(stack.mlflow_uri).get_model_version_by_alias(CANDIDATES, "challenger").version
            # the reviewer, in their own shell: their own MLflow account, and the hook the team's channel listens on
            approve_env = {**stack.as_user(REVIEWER), **hooks.env}
            t2 = time.monotonic()
            approved = sh([str(BIN / "onevision"), "approve", version, "--reason", "stack test", "--root", "."],
                          project, approve_env).stdout
            timings["approve_s"] = time.monotonic() - t2
            final = wait_for(lambda: (r := flow_run(stack, run_id)).state.is_final() and r,
                             "the retrain run to finish", 300, interval=2, detail=lambda: worker_log_tail(stack.logs))
            timings["retrain_total_s"] = time.monotonic() - t1
        record = json.loads(approved[:approved.rindex("}") + 1])
        yield {"stack": stack, "project": project, "env": env, "run_id": run_id, "promotion_id": promotion_id,
               "version": version, "served_version": record["version"], "record": record, "approve_out": approved,
               "final": final, "timings": timings, "hooks": hooks, "access": access, "access_check": checked}


def test_retrain_deployment_completes_through_the_worker_and_the_approval(stack_run):
    final = stack_run["final"]
    assert final.state.is_completed(), f"retrain ended {final.state.type}: {final.state.message}"
    assert f"resumed paused promotion flow run {stack_run['promotion_id']}" in stack_run["approve_out"]
    promotion = flow_run(stack_run["stack"], stack_run["promotion_id"])
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
    assert str(alias[0]) == stack_run["served_version"]
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


def test_no_credential_in_logs_rows_or_reports(stack_run, decisions):
    """After every decision of the permission matrix too (the `decisions` fixture): passwords of the admin, the service
    account, the reviewer and the reader, the Prefect auth string, the webhook's token and key, S3's and PostgreSQL's."""
    stack, project = stack_run["stack"], stack_run["project"]
    secrets = [*stack.secrets, *stack_run["hooks"].secrets]
    assert all(len(s) >= 12 for s in secrets)
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
    for key in stack.keys(MLFLOW_BUCKET, "artifacts/"):
        if key.rsplit(".", 1)[-1] in ("md", "json", "html", "txt", "yaml", "MLmodel") or key.endswith("MLmodel"):
            places[f"s3 {key}"] = s3_text(stack, MLFLOW_BUCKET, key)
    places["webhook bodies"] = "\n".join(h["body"] for h in stack_run["hooks"].received)
    places["command output"] = "\n".join([stack_run["approve_out"], *stack_run["access"], stack_run["access_check"],
                                          *decisions["outputs"]])
    assert places["prefect logs"], "the flow's logs did not reach the Prefect server"
    leaks = [where for where, text in places.items() for secret in secrets if secret in text]
    assert not leaks, f"a credential appears in {leaks}"
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != stack.secrets[0], "the stack leaked into the test env"
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ, "the stack leaked into the test env"


# --------------------------------------------------------------------------- issue 35: the permission matrix


@pytest.fixture(scope="module")
def decisions(stack_run):
    """Every account tries to approve, set champion and roll back, after the retrain's approval."""
    return play_matrix(stack_run)


def test_accounts_are_set_up_in_a_few_commands_and_setup_is_idempotent(stack_run):
    first, again = stack_run["access"]
    assert "created  user stack-reviewer" in first and f"granted  {SERVICE} on {CANDIDATES}" in first, first
    states = {line.split()[0] for line in again.splitlines() if line.strip() and not line.startswith(CANDIDATES)}
    assert states == {"ok"}, again
    assert "missing" not in stack_run["access_check"] and "wrong" not in stack_run["access_check"]


def test_the_service_account_registers_candidates_and_the_reviewer_account_approves(stack_run):
    from mlflow import MlflowClient

    stack, record = stack_run["stack"], stack_run["record"]
    with as_account(stack, READER):
        client = MlflowClient(stack.mlflow_uri)
        candidate = client.get_model_version(CANDIDATES, stack_run["version"])
        served = client.get_model_version("onevision", stack_run["served_version"])
        run = client.get_run(candidate.run_id)
    # the server gives whoever creates an experiment MANAGE on it: the retrain's experiment was the service account's
    from mlflow.server import get_app_client

    with as_account(stack, stack.admin[0]):
        owner = get_app_client("basic-auth", tracking_uri=stack.mlflow_uri).get_user_permission(SERVICE, "experiment", run.info.experiment_id)
    assert owner.permission == "MANAGE", "the retrain did not run as the service account"
    assert candidate.tags["status"] == "approved" and candidate.tags["served_as"] == f"onevision/{stack_run['served_version']}"
    assert served.source == f"models:/{CANDIDATES}/{stack_run['version']}"
    assert record["by"] == REVIEWER and record["identity"] == "mlflow-server"
    assert record["candidate"] == {"model": CANDIDATES, "version": stack_run["version"]}


def test_only_a_reviewer_sets_champion_the_server_refuses_everyone_else(decisions):
    d = decisions
    assert d["svc_plain_champion"] == "PERMISSION_DENIED" and d["reader_plain_champion"] == "PERMISSION_DENIED"
    assert d["second_passed"], "the second candidate should pass the opened gates"
    for name, who in (("svc_approve", SERVICE), ("reader_approve", READER)):
        r = d[name]
        assert r["rc"] != 0 and "Traceback" not in r["err"], r
        assert f"authenticated you as '{who}'" in r["err"] and f"'{who}' is not a reviewer" in r["err"], r["err"]
    assert d["svc_self_listed"].startswith("AccessDenied: the MLflow server refused approving") and "HTTP 403" in d["svc_self_listed"]
    assert d["reviewer_approve"]["rc"] == 0, d["reviewer_approve"]
    assert d["champion_after_refusals"] != d["champion_after_approve"] == d["champion_after_refused_rollbacks"]


def test_rollback_only_by_a_reviewer(decisions):
    d = decisions
    for name, who in (("svc_rollback", SERVICE), ("reader_rollback", READER)):
        r = d[name]
        lines = [line for line in r["err"].splitlines() if line.strip()]
        assert r["rc"] != 0 and "Traceback" not in r["err"], r
        assert any("HTTP 403" in line and f"'{who}' lacks EDIT on registered model 'onevision'" in line for line in lines), r["err"]
    assert d["svc_rollback"]["err"].count("ONEVISION_REVIEWER") == 1  # the note that it was ignored
    assert d["reviewer_rollback"]["rc"] == 0, d["reviewer_rollback"]
    assert d["champion_after_rollback"] == d["champion_after_refusals"]


def test_a_reviewer_cannot_approve_a_gates_failed_candidate(decisions):
    d = decisions
    assert d["third_passed"] is False
    r = d["reviewer_approve_failed"]
    assert r["rc"] != 0 and "not awaiting approval (status: gates-failed)" in r["err"], r
    assert d["champion_at_end"] == d["champion_after_rollback"]


def test_the_audit_log_names_the_authenticated_accounts(stack_run, decisions):
    records = audit_records(decisions)
    assert [(r["action"], r["by"], r["identity"]) for r in records] == [
        ("approve", REVIEWER, "mlflow-server"), ("approve", REVIEWER, "mlflow-server"), ("rollback", REVIEWER, "mlflow-server")]
    assert records[1]["candidate"] == {"model": CANDIDATES, "version": decisions["second"]}
    assert "authenticated by the MLflow server as 'stack-reader'" in decisions["models"]["out"]


def test_reviewers_are_told_signed_with_links_and_the_command(stack_run, decisions):
    from onevision.promotion.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

    hooks = stack_run["hooks"]
    waiting = hooks.events("awaiting-approval")
    assert {w["version"] for w in waiting} >= {stack_run["version"], decisions["second"]}
    first = next(w for w in waiting if w["version"] == stack_run["version"])
    assert first["verdict"] == "passed" and first["decide"]["approve"].startswith(f"onevision approve {stack_run['version']} ")
    assert first["links"]["gate_report"].endswith("/gate_report/gate_report.md") and "photos" in first["links"]
    assert first["links"]["mlflow_version"].startswith(stack_run["stack"].mlflow_uri + "/#/models/onevision-candidates/versions/")
    changed = hooks.events("champion-changed")
    assert [c["record"]["by"] for c in changed] == [REVIEWER, REVIEWER]
    assert [r["record"]["by"] for r in hooks.events("rolled-back")] == [REVIEWER]
    assert [f["version"] for f in hooks.events("gates-failed")] == [decisions["third"]]
    for hook in hooks.received:
        h = hook["headers"]
        assert verify(hooks.key, h[TIMESTAMP_HEADER.lower()], hook["body"].encode(), h[SIGNATURE_HEADER.lower()], max_age_s=3600), h
    print("stack timings:", json.dumps({**stack_run["timings"], "permission_matrix_s": round(decisions["seconds"], 1)}))
