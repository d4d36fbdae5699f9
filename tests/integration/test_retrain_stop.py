"""SIGTERM during a training stage: retrain stops it, keeps what finished, registers nothing (even with
--promote), and the next run resumes there."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.support import crash
from tests.support.projects import build_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sigterm_stops_the_running_stage_and_the_rerun_resumes(tmp_path, prefect_server):
    from prefect.settings import PREFECT_API_URL

    env = crash.env(PREFECT_API_URL=PREFECT_API_URL.value())
    project = build_project(tmp_path / "shop", "checkout").root
    # 40 encoder epochs: the stage runs for minutes, so the signal surely lands inside it, however loaded the machine
    running = crash.start_until_stage(project, "align_encoder", extra_env={"PREFECT_API_URL": PREFECT_API_URL.value()}, timeout=300,
                                      extra=("encoder.epochs=40",), flags=("--promote",))
    proc = running.proc
    time.sleep(3)  # inside the stage's training
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=90)
    running.reader.join(10)
    out = running.output
    assert code == 128 + signal.SIGTERM, out[-3000:]  # exited, not killed: cleanup ran
    assert "stopping stage 'align_encoder'" in out, out[-3000:]
    assert "retrain stopped" in out and "Traceback" not in out.split("retrain stopped")[-1]
    deadline = time.time() + 30
    while crash.pids_under(project) and time.time() < deadline:
        time.sleep(0.5)
    assert crash.pids_under(project) == []  # dvc and the stage are gone, not orphaned

    assert "align_encoder" not in crash.locked_stages(project)  # nothing of the stopped stage was recorded
    assert crash.registered_versions(project) == []  # a stopped run with --promote registers nothing
    status = json.loads(subprocess.run([str(crash.BIN / "dvc"), "status", "--json"], cwd=project, env=env,
                                       capture_output=True, text=True, check=True).stdout or "{}")
    assert "align_encoder" in status and not {"prepare", "validate", "split"} & set(status)
    rerun = subprocess.run([str(crash.BIN / "onevision"), "retrain", "--until", "split"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    for stage in ("prepare", "validate", "split"):
        assert any(line.split()[:2] == [stage, "skipped"] for line in rerun.stdout.splitlines()), rerun.stdout
