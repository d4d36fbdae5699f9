"""Crashes and secrets on a real retrain flow (the small profile shrunk to minutes).

* SIGKILL of every process of the flow in the middle of training stages: the rerun resumes after the last
  completed stage and ends with the same models as a run that was never interrupted (same seed).
* Canary credentials planted in the environment of the retrain, promotion and drift runs appear in none of
  their outputs: files, the MLflow store, the Prefect server's logs and artifacts, the console.

CI runs the canary scan; the crashes are drill tests (``-m drill``, ``benchmarks/drill.py --full``): one in
the VRQ training, and one in each training stage of a run to the end, compared by every stage's metrics.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support import crash
from tests.support.projects import build_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CANARIES = {
    "AWS_ACCESS_KEY_ID": "AKIACANARY0KEY0ID0ONE",
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-3f9a1c77",
    "AWS_SESSION_TOKEN": "canary-aws-session-token-0b6e",
    "PGPASSWORD": "canary-pg-password-91d4",
    "ONEVISION_DRIFT_WEBHOOK_URL": "http://127.0.0.1:9/services/T0/B0/canary-webhook-token-5c2e",
    "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-password-27aa",
    "GITHUB_TOKEN": "ghp_canarygithubtoken00000000000000000000",
}


def dvc_changed(project) -> set[str]:
    """What `dvc status` calls changed; the first call after a kill removes the dead dvc's lock entry and exits 1
    (as the pipeline's own status check handles): then it is asked again."""
    for _ in range(2):
        proc = subprocess.run([str(crash.BIN / "dvc"), "status", "--json"], cwd=project, env=crash.env(), capture_output=True, text=True)
        if proc.returncode == 0:
            return set(json.loads(proc.stdout or "{}"))
        assert "had been killed" in proc.stderr + proc.stdout, proc.stderr
    raise AssertionError(proc.stderr)


@pytest.fixture(scope="module")
def api_env(prefect_server):
    """The session's Prefect server for the CLI subprocesses (no temporary server per run), and the canaries."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value(), **CANARIES}


def crash_and_resume(project, kills: list[str], until: str | None, api_env: dict) -> list[crash.Crash]:
    crashes = []
    for stage in kills:
        before = crash.locked_stages(project)
        c = crash.run_and_kill(project, stage, until=until, extra_env=api_env)
        crashes.append(c)
        assert crash.pids_under(project) == [], "a process of the killed run survived"
        locked = crash.locked_stages(project)
        assert stage not in locked, f"{stage} finished before the kill: make the kill earlier\n{c.output[-2000:]}"
        assert before <= locked  # what had finished stays finished
        assert stage in dvc_changed(project)  # the killed stage reruns; nothing of it was recorded
    done = crash.run_to_end(project, until=until, extra_env=api_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return crashes


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, api_env):
    """A run SIGKILLed in the VRQ tokenizer's training (canaries in its environment), then resumed up to it."""
    project = build_project(tmp_path_factory.mktemp("crashed") / "shop", "checkout").root
    crashes = crash_and_resume(project, ["vrq"], "vrq", api_env)
    (project / "console.log").write_text("".join(c.output for c in crashes))  # scanned for canaries with the rest
    return project


@pytest.mark.drill  # two minutes: in the fast drill, out of CI's 25 (CI stops and resumes a stage by SIGTERM)
def test_sigkill_in_a_training_stage_then_resume_gives_the_same_models(crashed, tiny_full_run):
    """CI's subset: one crash, in the tokenizer's training (SIGTERM in the encoder's: test_retrain_stop.py; one in
    every training stage in the full drill), compared with the session's uninterrupted run of the same seed."""
    reference, _ = tiny_full_run
    assert crash.locked_stages(crashed) <= crash.locked_stages(reference)
    assert crash.result_differences(crashed, reference) == []  # same tables, encoder, SIDs; same losses and probes
    assert dvc_changed(crashed) <= {"mca", "pretrain", "sft", "dpo", "calibrate_pruning", "evaluate"}


@pytest.mark.drill
def test_sigkill_in_every_training_stage_then_resume_gives_the_same_evaluation(tmp_path, api_env, tiny_full_run):
    """The full drill: one crash in each training stage, one after another, then the same TEST metrics."""
    reference, _ = tiny_full_run
    project = build_project(tmp_path / "crashed", "checkout").root
    crash_and_resume(project, ["align_encoder", "vrq", "mca", "pretrain", "sft", "dpo", "calibrate_pruning"], None, api_env)
    assert crash.result_differences(project, reference) == []  # every stage's metrics, evaluate's TEST quality too
    assert dvc_changed(project) == set()


# --------------------------------------------------------------------------- canary secrets


def scan(paths, texts: dict[str, str]) -> list[str]:
    """Where any canary value appears: files (bytes, so SQLite stores and parquet count) and named texts."""
    needles = [v.encode() for v in CANARIES.values()]
    # the webhook's token is its secret part; its host and port are not
    needles.append(CANARIES["ONEVISION_DRIFT_WEBHOOK_URL"].rsplit("/", 1)[1].encode())
    found = []
    for root in paths:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {n.decode()}" for n in needles if n in data]
    for name, text in texts.items():
        found += [f"{name}: {n.decode()}" for n in needles if n.decode() in text]
    return found


def prefect_texts() -> dict[str, str]:
    """Every log line, flow-run parameter and artifact the Prefect server holds."""
    from prefect import get_client

    def every(read) -> list:  # the server pages at 200
        found, offset = [], 0
        while page := read(limit=200, offset=offset):
            found += page
            offset += len(page)
        return found

    with get_client(sync_client=True) as client:
        logs, runs, artifacts = every(client.read_logs), every(client.read_flow_runs), every(client.read_artifacts)
    return {
        "prefect logs": "\n".join(log.message for log in logs),
        "prefect flow runs": "\n".join(json.dumps(r.parameters, default=str) + str(r.state) for r in runs),
        "prefect artifacts": "\n".join(str(a.data) + str(a.description) for a in artifacts),
    }


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory, api_env):
    """The retrain flow through the data stages with canary credentials in its environment."""
    project = build_project(tmp_path_factory.mktemp("canary") / "shop", "checkout").root
    proc = crash.run_to_end(project, until="validate", extra_env=api_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (project / "console.log").write_text(proc.stdout + proc.stderr)  # scanned with the rest
    return project


def test_no_canary_secret_reaches_any_output(canary_run, api_env, isolated_state, tmp_path):
    from onevision.monitoring.drills import simulate_shift
    from tests.support.synthetic_shop import synthetic_window

    # The promotion flow on a trained project (the tiny knn one: seconds), decided by a reviewer.
    tiny = build_project(tmp_path / "tiny", "tiny-trained").root
    promote = subprocess.run([str(crash.BIN / "onevision"), "promote", "--approval", "registry", "--root", str(tiny)],
                             env=crash.env(**api_env), capture_output=True, text=True, timeout=600)
    assert promote.returncode == 0, promote.stdout[-2000:] + promote.stderr[-2000:]
    approve = subprocess.run([str(crash.BIN / "onevision"), "approve", "1", "--reason", "canary drill", "--root", str(tiny)],
                             env=crash.env(**api_env, ONEVISION_REVIEWER="alice"), capture_output=True, text=True, timeout=300)
    assert approve.returncode == 0, approve.stdout[-2000:] + approve.stderr[-2000:]

    # Drift with shifted traffic: an alarm whose webhook (a token URL in the environment) is down.
    drift_project = build_project(tmp_path / "drift", "synthetic").root
    import pandas as pd

    items = pd.read_parquet(drift_project / "data/validated/items.parquet")
    simulate_shift("lighting", synthetic_window(drift_project, 300, seed=5), items, seed=1).to_parquet(drift_project / "dark.parquet")
    drift = subprocess.run([str(crash.BIN / "onevision"), "drift", "--current", str(drift_project / "dark.parquet"),
                            "--root", str(drift_project)], env=crash.env(**api_env), capture_output=True, text=True, timeout=600)
    assert drift.returncode == 1 and "Traceback" not in drift.stdout + drift.stderr, drift.stdout[-2000:] + drift.stderr[-2000:]
    assert "alert not delivered" in drift.stdout + drift.stderr  # the webhook was tried, and failed, with the URL in hand

    texts = {"promote console": promote.stdout + promote.stderr + approve.stdout + approve.stderr, "drift console": drift.stdout + drift.stderr, **prefect_texts()}
    leaks = scan([canary_run, tiny, drift_project, isolated_state], texts)
    from tests.support.drill import count

    count("canary.outputs", len(CANARIES) * (len(texts) + 3))  # each canary looked for in each output
    assert leaks == [], "\n".join(leaks[:20])
