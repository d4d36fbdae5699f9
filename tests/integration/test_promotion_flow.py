"""The promotion flow on a Prefect server: paused for a reviewer's typed input, resumed from another thread."""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from typer.testing import CliRunner

from onevision.app.cli import app
from onevision.project import Project
from onevision.registry.model_registry import AWAITING, CHALLENGER, CHAMPION
from tests.support.projects import build_project

from .conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def project(tmp_path, isolated_state) -> Path:
    return build_project(tmp_path / "project", "tiny-trained").root


def allow_form_decisions(project: Path) -> Path:
    """registry.form_decisions: allow, as behind a UI that authenticates each reviewer."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["overrides"]["registry"]["form_decisions"] = "allow"
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return project


def registry(project: Path):
    return Project.open(project).registry()


def flow_state(flow_run_id: UUID):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def start_promotion(project: Path) -> tuple[threading.Thread, dict]:
    """Run the promotion flow (approval=pause) in a thread, as a long-running flow process would."""
    from tests.support.flows import load

    promotion = load("promote.py:promotion")

    result: dict = {}

    def run() -> None:
        try:
            result["outcome"] = promotion(root=str(project), approval="pause")
        except BaseException as exc:  # surfaced by the test
            result["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    return thread, result


def paused_run(project: Path) -> tuple[str, UUID]:
    """(version, flow run id) once the flow has registered its candidate and paused."""

    def ready():
        mv = registry(project).by_alias(CHALLENGER)
        if mv is None or "prefect.flow_run_id" not in mv.tags:
            return None
        run_id = UUID(mv.tags["prefect.flow_run_id"])
        state = flow_state(run_id)
        return (str(mv.version), run_id) if state and state.is_paused() else None

    return wait_for(ready, "the promotion flow to pause for a reviewer")


def test_paused_flow_is_resumed_with_typed_input(project, prefect_server):
    from prefect.flow_runs import resume_flow_run

    allow_form_decisions(project)
    thread, result = start_promotion(project)
    version, run_id = paused_run(project)
    assert registry(project).status(registry(project).version(version)) == AWAITING
    first_key = flow_state(run_id).state_details.pause_key

    # Input the form's schema refuses: the server rejects it and the run stays paused.
    for bad in ({"reviewer": "alice", "decision": "maybe", "reason": "x"}, {"reviewer": "alice", "decision": "approve"}):
        with pytest.raises(RuntimeError, match="Cannot resume"):
            resume_flow_run(run_id, run_input=bad)
        assert flow_state(run_id).is_paused()

    # Well-formed input from someone who is not a reviewer: refused by the flow, which pauses again.
    resume_flow_run(run_id, run_input={"reviewer": "mallory", "decision": "approve", "reason": "trust me"})
    wait_for(lambda: (s := flow_state(run_id)).is_paused() and s.state_details.pause_key != first_key, "the flow to pause again")
    assert thread.is_alive() and CHAMPION not in registry(project).aliases()

    resume_flow_run(run_id, run_input={"reviewer": "alice", "decision": "approve", "reason": "every gate green"})
    thread.join(timeout=120)
    assert "error" not in result, result.get("error")
    assert result["outcome"] == {**result["outcome"], "version": version, "gates_passed": True, "status": "champion", "reviewer": "alice"}
    reg = registry(project)
    assert reg.aliases() == {CHAMPION: version}
    record = reg.audit_log()[-1]
    assert (record["action"], record["by"], record["reason"]) == ("approve", "alice", "every gate green")
    assert record["identity"] == "prefect-form"
    assert flow_state(run_id).is_completed()


def test_cli_decision_resumes_the_paused_flow(project, prefect_server):
    from prefect.flow_runs import resume_flow_run

    thread, result = start_promotion(project)
    version, run_id = paused_run(project)
    # By default a name typed into the form proves nothing: the flow refuses it and pauses again.
    first_key = flow_state(run_id).state_details.pause_key
    resume_flow_run(run_id, run_input={"reviewer": "alice", "decision": "approve", "reason": "typed in the UI"})
    wait_for(lambda: (s := flow_state(run_id)).is_paused() and s.state_details.pause_key != first_key, "the flow to pause again")
    assert CHAMPION not in registry(project).aliases() and registry(project).audit_log() == []
    out = CliRunner().invoke(app, ["reject", version, "--reviewer", "bob", "--reason", "orders flat", "--root", str(project)], env={"ONEVISION_REVIEWER": "bob"})
    assert out.exit_code == 0, out.output
    assert f"resumed paused promotion flow run {run_id}" in out.output
    thread.join(timeout=120)
    assert result["outcome"]["status"] == "rejected"
    assert CHAMPION not in registry(project).aliases()
    assert flow_state(run_id).is_completed()


def test_registry_mode_ends_with_the_candidate_waiting(project, prefect_server):
    from tests.support.flows import load

    promotion = load("promote.py:promotion")

    outcome = promotion(root=str(project), approval="registry")
    assert outcome["status"] == AWAITING and outcome["gates_passed"]
    assert registry(project).aliases() == {CHALLENGER: outcome["version"]}


def test_promote_opens_the_project_once_per_entry_point(project, prefect_server, monkeypatch):
    """`onevision promote`: params.yaml read by the command (its check before Prefect starts) and by the flow,
    the tracking URI resolved and the registry opened once, by the flow (were 4, 3 and 2)."""
    from tests.support.resolutions import count_resolutions

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.resolve() / 'mlflow.db'}")  # what the command sets; put back after
    counted = count_resolutions(monkeypatch)
    result = CliRunner().invoke(app, ["promote", "--approval", "registry", "--root", str(project)])
    assert result.exit_code == 0, result.output
    assert counted == {"load_config": 2, "tracking_uri": 1, "ModelRegistry": 1}


def test_a_gates_failed_promotion_says_so_in_its_state(project, prefect_server):
    from tests.support.flows import load

    promotion = load("promote.py:promotion")

    from tests.support.tiny_trained import GOOD_METRICS, write_metrics

    write_metrics(project, evaluate={"knn": {**GOOD_METRICS["knn"], "hr@10": 0.30}, "mca": GOOD_METRICS["mca"]})
    state = promotion(root=str(project), approval="registry", return_state=True)
    assert state.name == "GatesFailed" and "hr@10" in state.message
    outcome = state.result()
    assert outcome["status"] == "gates-failed" and CHALLENGER not in registry(project).aliases()
