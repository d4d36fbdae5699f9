"""Crash a retrain flow as a lost machine would (SIGKILL of every process of the project), then resume it.

Shared by the crash-resume tests and the reliability drill (benchmarks/drill.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.drill import count
from tests.support.projects import TINY_FLOW as TINY  # the shrunk small profile of the pipeline tests

BIN = Path(sys.executable).parent
# Outputs whose bytes carry wall times (metrics, reports, plots): compared by their quality figures, not their hashes.
TIMED_PREFIXES = ("metrics/", "reports/", "plots/")


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def retrain_argv(until: str | None = None, extra: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> list[str]:
    argv = [str(BIN / "onevision"), "retrain", "--profile", "small", *flags]
    for s in (*TINY, *extra):
        argv += ["--set", s]
    return argv + (["--until", until] if until else [])


def registered_versions(project: Path) -> list[str]:
    """Versions of the project's registered model in its embedded registry ([] when none was ever registered)."""
    from mlflow.exceptions import MlflowException

    from onevision.project import Project

    try:
        return [v.version for v in Project.open(project).registry().versions()]
    except MlflowException:  # RESOURCE_DOES_NOT_EXIST: no model registered
        return []


def pids_under(project: Path) -> list[int]:
    """Live processes whose working directory is ``project`` (the flow, dvc, the stage), this one excluded."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if Path(proc / "cwd").resolve() == project.resolve():
                found.append(int(proc.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


@dataclass
class Crash:
    stage: str
    output: str
    killed: list[int] = field(default_factory=list)


@dataclass
class Running:
    """A retrain flow started in the background whose output is being collected."""

    proc: subprocess.Popen
    lines: list[str]
    reader: threading.Thread

    @property
    def output(self) -> str:
        return "".join(self.lines)


def start_until_stage(project: Path, stage: str, *, until: str | None = None, extra_env: dict | None = None,
                      timeout: float = 600, extra: tuple[str, ...] = (), flags: tuple[str, ...] = (),
                      marker: str | None = None) -> Running:
    """Start the retrain flow (its own session) and return once ``stage`` has started running (with ``marker``:
    once the stage has logged a line containing it, e.g. its first training epoch)."""
    proc = subprocess.Popen(retrain_argv(until, extra, flags), cwd=project, env=env(**(extra_env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker is None and f"[{stage}] Running stage" in line:
                started.set()
            elif marker is not None and f"[{stage}]" in line and marker in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(timeout):
        proc.kill()
        raise AssertionError(f"stage {stage} never started:\n" + "".join(lines[-40:]))
    return Running(proc, lines, reader)


# Stages that train for about a second at the tests' sizes: a fixed delay can land after they finished
# (measured: vrq done 1.1 s after its start; calibrate_pruning finished inside the 4 s in one full drill), so the
# kill waits for the line that starts their work instead.
KILL_MARKERS = {"vrq": "vrq epoch 1:", "calibrate_pruning": "points on"}


def run_and_kill(project: Path, stage: str, *, until: str | None = None, after_s: float | None = None, extra_env: dict | None = None) -> Crash:
    """Start the retrain flow and SIGKILL all of it ``after_s`` seconds into ``stage`` (default: 4 s, or at once
    when the stage logs its :data:`KILL_MARKERS` line)."""
    marker = KILL_MARKERS.get(stage)
    after_s = (0.0 if marker else 4.0) if after_s is None else after_s
    running = start_until_stage(project, stage, until=until, extra_env=extra_env, marker=marker)
    proc, lines, reader = running.proc, running.lines, running.reader
    time.sleep(after_s)
    count("crash.kills")
    killed = []
    for _ in range(3):  # children may fork while we kill: sweep until none is left
        victims = set(pids_under(project)) | {proc.pid}
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    proc.wait(30)
    reader.join(10)
    # A killed dvc whose parent died too stays a zombie until init reaps it, and DVC takes a zombie's lock
    # for a live one ("is busy"); a crashed node has no such process left: wait until they are all gone.
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.2)
    return Crash(stage, "".join(lines), killed)


def run_to_end(project: Path, *, until: str | None = None, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(retrain_argv(until), cwd=project, env=env(**(extra_env or {})), capture_output=True, text=True, timeout=1200)


def locked_stages(project: Path) -> set[str]:
    import yaml

    lock = project / "dvc.lock"
    return set(yaml.safe_load(lock.read_text()).get("stages", {})) if lock.exists() else set()


def output_hashes(project: Path) -> dict[str, str]:
    """{out path: md5} from dvc.lock for every stage output that has no wall time in it (models, tables, SIDs)."""
    import yaml

    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in stages.values() for o in s.get("outs", []) if not o["path"].startswith(TIMED_PREFIXES)}


def _numbers(doc, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        out[prefix.rstrip(".")] = float(doc)
    return out


TIMED_KEY = ("seconds", "_ms", "ms_", "latency", "throughput", "qps", "per_s", "rss", "_mb")  # wall time and memory


RANK_SLOT_TOL = 2e-3  # two ranked slots of the TINY profile's TEST set


def result_differences(project: Path, reference: Path, *, rel: float = 1e-4) -> list[str]:
    """How ``project``'s run differs from ``reference``'s: data tables, the SID table, the encoder and the VRQ
    codebooks byte for byte (training is deterministic: onevision.reproducible); every stage's metrics (losses,
    probes, TEST quality) within ``rel``, wall times aside. (The generative model folders carry their training
    seconds, and calibrate_pruning picks its operating point by measured latency: those are compared by number.)"""
    import math

    diffs = []
    ours, theirs = output_hashes(project), output_hashes(reference)
    exact = [p for p in ours if p.startswith(("data/", "models/encoder", "models/vrq"))]
    diffs += [f"{p}: bytes differ" for p in exact if theirs.get(p) != ours[p]]
    for stage in sorted(locked_stages(project)):
        mine, ref = project / "metrics" / f"{stage}.json", reference / "metrics" / f"{stage}.json"
        if not mine.exists():
            continue
        a, b = _numbers(json.loads(mine.read_text())), _numbers(json.loads(ref.read_text()))
        for key in sorted(set(a) | set(b)):
            if any(t in key for t in TIMED_KEY):
                continue
            x, y = a.get(key), b.get(key)
            # A TEST rank metric moves in steps of one ranked slot (cat_precision@5 on 250 queries: 8e-4): a near tie
            # between two items could flip with VRQ's last float bits before training was deterministic (measured once:
            # 1 slot of 1,250 in one system); the pruned system can still move when the latency-chosen point differs.
            slots = RANK_SLOT_TOL if stage == "evaluate" and "@" in key else 1e-6
            if x is None or y is None or not (math.isclose(x, y, rel_tol=rel, abs_tol=slots) or (math.isnan(x) and math.isnan(y))):
                diffs.append(f"metrics/{stage}.json {key}: {x} vs {y}")
    return diffs
