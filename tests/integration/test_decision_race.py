"""Two reviewers deciding at once, from separate processes, on one registry: exactly one champion, one record each."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from onevision.project import Project
from onevision.promotion.workflow import verify_champion
from onevision.registry.model_registry import CHAMPION, PREVIOUS
from tests.support.defaults import default_params
from tests.support.drill import count

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
REVIEWERS = ["alice", "bob", "carol", "dave"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = default_params()
    raw["overrides"] = {"registry": {"reviewers": REVIEWERS}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def gated_versions(project: Path, n: int) -> list[str]:
    """``n`` versions that passed their gates and await approval (what `onevision promote` leaves)."""
    registry = Project.open(project).registry()
    registry.ensure_model()
    out = []
    for _ in range(n):
        mv = registry.client.create_model_version(registry.name, source=str(project),
                                                   tags={"status": "awaiting-approval", "gates.passed": "true"})
        out.append(str(mv.version))
    return out


def decide_at_once(project: Path, commands: list[tuple[str, list[str]]]) -> list[subprocess.CompletedProcess]:
    """Start every (reviewer, argv) together, released at the same instant once all have imported; each holds its
    check-then-act window open for a second, so without the decision lock every approval would go through."""
    go = project / f".go-{time.time_ns()}"
    count("race.decisions", len(commands))
    procs = []
    for i, (reviewer, argv) in enumerate(commands):
        env = {**os.environ, "ONEVISION_REVIEWER": reviewer, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        code = ("import sys, time, pathlib; from onevision.app.cli import app; from onevision.promotion import workflow as promotion; "
                # widen the window between "is it still awaiting?" and moving the alias, as a slow server would
                "check = promotion._awaiting; promotion._awaiting = lambda *a: (check(*a), time.sleep(1.0))[0]; "
                f"pathlib.Path({str(go)!r} + '.ready{i}').touch(); "
                f"list(iter(lambda: pathlib.Path({str(go)!r}).exists() or time.sleep(0.01), True)); "  # wait for the go
                f"sys.argv = ['onevision', *{argv!r}]; app()")
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=project, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    deadline = time.time() + 120
    while not all(Path(f"{go}.ready{i}").exists() for i in range(len(commands))) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()  # every process has imported: release them together
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out))
    return results


def test_racing_approvals_of_one_candidate_leave_one_champion_and_one_record(project):
    (version,) = gated_versions(project, 1)
    results = decide_at_once(project, [(r, ["approve", version, "--reason", f"{r} says yes", "--root", str(project)]) for r in REVIEWERS])
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2, 2, 2], [r.stdout[-600:] for r in results]
    for r in results:
        assert "Traceback" not in r.stdout, r.stdout
        if r.returncode:
            assert "not awaiting approval (status: champion)" in r.stdout, r.stdout
    registry = Project.open(project).registry()
    assert registry.aliases() == {CHAMPION: version}
    records = registry.audit_log()
    assert [rec["action"] for rec in records] == ["approve"]
    winner = next(r for r in results if r.returncode == 0)
    assert f'"by": "{records[0]["by"]}"' in winner.stdout
    assert verify_champion(registry).approved
    assert registry.client.get_registered_model(registry.name).name == registry.name
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):  # the lock is gone
        registry.client.get_registered_model(f"{registry.name}.decision-lock")


def test_racing_approve_reject_and_rollback_keep_the_registry_consistent(project):
    first, second, third = gated_versions(project, 3)
    registry = Project.open(project).registry()
    from onevision.promotion.workflow import approve

    approve(Project.open(project), version=first, reviewer="alice", reason="first champion")
    results = decide_at_once(project, [
        ("bob", ["approve", second, "--reason", "second", "--root", str(project)]),
        ("carol", ["approve", third, "--reason", "third", "--root", str(project)]),
        ("dave", ["reject", third, "--reason", "no", "--root", str(project)]),
        ("alice", ["rollback", "--reason", "oops", "--root", str(project)]),
    ])
    for r in results:
        assert "Traceback" not in r.stdout and r.returncode in (0, 2), r.stdout
    records = registry.audit_log()
    assert len(records) == 1 + sum(r.returncode == 0 for r in results)  # one record per decision that went through
    # Replaying the audit log gives the registry's aliases: no decision half-applied or lost.
    champion, previous = None, None
    for rec in records:
        if rec["action"] == "approve":
            champion, previous = rec["version"], (champion if champion != rec["version"] else previous)
        elif rec["action"] == "rollback":
            champion, previous = rec["version"], None
    aliases = registry.aliases()
    assert aliases.get(CHAMPION) == champion and aliases.get(PREVIOUS) == previous
    assert verify_champion(registry).approved
    # the racing approve and reject of the third version: at most one of them went through
    assert sum(rec["version"] == third for rec in records if rec["action"] in ("approve", "reject")) <= 1
