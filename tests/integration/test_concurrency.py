"""Two of everything at once: retrain flows in two checkouts, and `dvc push` to one remote."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support import crash
from tests.support.drill import count
from tests.support.projects import build_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(crash.BIN / "dvc"), *args], cwd=project, env=crash.env(), capture_output=True, text=True)
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def parent_runs(project: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("onevision-retrain")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


@pytest.fixture(scope="module")
def api_env(prefect_server):
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value()}


@pytest.mark.drill  # a minute of two flows at once: in the full drill, not in CI's time budget
def test_two_retrains_at_once_in_two_checkouts_keep_their_own_outputs_and_runs(tmp_path, api_env):
    """Same machine, same DVC site cache, same Prefect server; different seeds, so any mix-up shows."""
    a, b = build_project(tmp_path / "team-a", "checkout").root, build_project(tmp_path / "team-b", "checkout").root
    argv = crash.retrain_argv("validate")
    procs = [subprocess.Popen(argv + extra, cwd=p, env=crash.env(**api_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p, extra in ((a, []), (b, ["--set", "seed=1"]))]
    count("race.retrains", len(procs))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    assert crash.output_hashes(a)["data/prepared"] != crash.output_hashes(b)["data/prepared"]  # two shops, as configured
    for project in (a, b):
        assert json.loads(dvc(project, "status", "--json", "--with-deps", "validate").stdout or "{}") == {}
        runs = parent_runs(project)
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # its own parent run, in its own store
        assert runs[0].data.params["seed"] == ("1" if project == b else "0")
    # What was written under contention is what a run alone writes: rebuild A serially, same bytes.
    lock = (a / "dvc.lock").read_text()
    shutil.rmtree(a / "data")
    dvc(a, "repro", "validate")
    assert (a / "dvc.lock").read_text() == lock


def _repo(root: Path, remote: Path) -> Path:
    root.mkdir(parents=True)
    for cmd in (["git", "init", "-q", "-b", "main"], [str(crash.BIN / "dvc"), "init", "-q"],
                [str(crash.BIN / "dvc"), "remote", "add", "-d", "shared", str(remote)]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=crash.env())
    return root


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_two_dvc_pushes_at_once_leave_a_consistent_remote(tmp_path):
    remote = tmp_path / "remote"
    repos = [_repo(tmp_path / f"clone-{i}", remote) for i in range(2)]
    rng = np.random.default_rng(0)
    shared = rng.bytes(2_000_000)  # the same object pushed by both
    for i, repo in enumerate(repos):
        data = repo / "data"
        data.mkdir()
        (data / "shared.bin").write_bytes(shared)
        for j in range(40):
            (data / f"own-{j}.bin").write_bytes(rng.bytes(50_000 + i))
        dvc(repo, "add", "data")
    procs = [subprocess.Popen([str(crash.BIN / "dvc"), "push"], cwd=r, env=crash.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in repos]
    count("race.dvc_pushes", len(procs))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # Each clone's data comes back whole from the shared remote, into a fresh checkout without a cache.
    for i, repo in enumerate(repos):
        fresh = tmp_path / f"fresh-{i}"
        shutil.copytree(repo, fresh, ignore=shutil.ignore_patterns("cache", "data"))
        dvc(fresh, "pull")
        assert _digest(fresh / "data") == _digest(repo / "data")
        assert "are in sync" in dvc(fresh, "status", "--cloud").stdout  # every object of the clone is on the remote, whole
    assert not any(p.name.endswith((".tmp", ".lock")) for p in remote.rglob("*") if os.path.isfile(p))  # no half-written objects
