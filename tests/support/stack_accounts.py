"""The permission matrix of issue 35 on the running stack: who may register, approve, set champion, roll back.

:func:`play_matrix` (test_stack.py's `decisions` fixture, after its retrain was approved) plays each account in
turn, through the command line as a person would and through the plain MLflow API as someone bypassing it,
and records what happened; the tests at the end of test_stack.py assert it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from onevision.registry.access import password_env  # noqa: F401 - re-exported for test_stack.py
from tests.support.stack import s3_client

BIN = Path(sys.executable).parent
SERVED = "onevision"
CANDIDATES = "onevision-candidates"
REVIEWER = "stack-reviewer"
SERVICE = "onevision-svc"  # the retrain deployment's and the worker's MLflow account
READER = "stack-reader"


@contextmanager
def as_account(stack, user: str, extra: dict[str, str] | None = None):
    """This test process talks to the stack as ``user`` inside the block; its environment is put back after."""
    env = {**stack.as_user(user, base={}), **(extra or {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_text(stack, bucket: str, key: str) -> str:
    return s3_client(stack.s3_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read().decode(errors="replace")


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([str(BIN / "onevision"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}


def plain_set_champion(stack, user: str, version: str) -> str:
    """Set champion with the plain MLflow API as ``user`` (what the MLflow UI's "Add alias" does): 'ok' or the error code."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with as_account(stack, user):
        try:
            MlflowClient(stack.mlflow_uri).set_registered_model_alias(SERVED, "champion", version)
            return "ok"
        except MlflowException as exc:
            return exc.error_code


def register_and_gate(stack, project: Path, hooks_env: dict[str, str], *, fail_latency: bool = False) -> tuple[str, bool]:
    """What the retrain's promotion does, in this process, as the service account: a new candidate, gated."""
    from onevision.project import Project
    from onevision.promotion.workflow import check_gates, register_candidate

    with as_account(stack, SERVICE, hooks_env):
        opened = Project.open(project)
        if fail_latency:
            opened.cfg.registry.gates.latency_budget_ms = 0.001
        candidate = register_candidate(opened)
        return candidate.version, check_gates(opened, candidate.version).passed


def play_matrix(stack_run) -> dict:
    """Each account tries each decision; returns what happened (command results, champion after each step)."""
    from onevision.project import Project
    from onevision.promotion.workflow import approve

    stack, project, hooks = stack_run["stack"], stack_run["project"], stack_run["hooks"]
    t0 = time.monotonic()
    out: dict = {"outputs": []}
    first = stack_run["served_version"]

    def run(name: str, args: list[str], user: str, **extra: str) -> dict:
        result = cli([*args, "--root", "."], project, {**stack.as_user(user), **hooks.env, **extra})
        out[name] = result
        out["outputs"] += [result["out"], result["err"]]
        return result

    out["svc_plain_champion"] = plain_set_champion(stack, SERVICE, first)
    out["reader_plain_champion"] = plain_set_champion(stack, READER, first)

    second, passed = register_and_gate(stack, project, hooks.env)
    out["second"], out["second_passed"] = second, passed
    # a team member who is not a reviewer, claiming to be one
    run("svc_approve", ["approve", second, "--reason", "me"], SERVICE, ONEVISION_REVIEWER=REVIEWER)
    run("reader_approve", ["approve", second, "--reason", "me"], READER, ONEVISION_REVIEWER=REVIEWER)
    # ... who also listed themselves in their own copy of registry.reviewers: only the server stands in the way
    with as_account(stack, SERVICE):
        opened = Project.open(project)
        opened.cfg.registry.reviewers = [*opened.cfg.registry.reviewers, SERVICE]
        try:
            approve(opened, version=second, reviewer=SERVICE, reason="self-listed")
            out["svc_self_listed"] = "approved"
        except Exception as exc:  # noqa: BLE001 - the refusal is under test
            out["svc_self_listed"] = f"{type(exc).__name__}: {exc}"
    out["champion_after_refusals"] = _champion(stack)
    run("reviewer_approve", ["approve", second, "--reason", "second candidate"], REVIEWER)
    out["champion_after_approve"] = _champion(stack)

    run("svc_rollback", ["rollback", "--reason", "me"], SERVICE, ONEVISION_REVIEWER=REVIEWER)
    run("reader_rollback", ["rollback", "--reason", "me"], READER)
    out["champion_after_refused_rollbacks"] = _champion(stack)
    run("reviewer_rollback", ["rollback", "--reason", "second is worse"], REVIEWER)
    out["champion_after_rollback"] = _champion(stack)

    third, passed = register_and_gate(stack, project, hooks.env, fail_latency=True)
    out["third"], out["third_passed"] = third, passed
    run("reviewer_approve_failed", ["approve", third, "--reason", "looks fine"], REVIEWER)
    out["champion_at_end"] = _champion(stack)
    run("audit", ["audit", "--json"], READER)
    run("models", ["models"], READER)
    out["seconds"] = time.monotonic() - t0
    print(f"permission matrix: {out['seconds']:.0f} s")
    return out


def _champion(stack) -> str | None:
    from mlflow import MlflowClient

    with as_account(stack, READER):
        try:
            return str(MlflowClient(stack.mlflow_uri).get_model_version_by_alias(SERVED, "champion").version)
        except Exception:  # noqa: BLE001
            return None


def audit_records(decisions) -> list[dict]:
    return json.loads(decisions["audit"]["out"])
