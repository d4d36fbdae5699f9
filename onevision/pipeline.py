"""Run pipeline stages through DVC and record them in MLflow.

DVC decides whether a stage must run (its deps, params and outs against
``dvc.lock``), so ``dvc repro`` alone and the Prefect flow give the same
outputs and skip the same work. This module is what the flow's tasks call;
it does not import Prefect.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ruamel.yaml import YAML

from onevision import paths
from onevision.config import PARAMS_FILE, ConfigError, complete_overrides, deep_merge, load_config, overrides_to_tree
from onevision.stages import declaration, stage_names
from onevision.tracking import dvc_lock_hashes, git_revision

log = logging.getLogger(__name__)

def stages_until(until: str | None) -> list[str]:
    """Stages from the first through ``until`` (all when None), in pipeline order (:func:`onevision.stages.stage_names`)."""
    order = stage_names()
    if until is None:
        return list(order)
    if until not in order:
        raise ConfigError(f"unknown stage '{until}' for --until; stages: {', '.join(order)}")
    return list(order[: order.index(until) + 1])


def local_state_env(root: Path) -> dict[str, str]:
    """Defaults that keep Prefect, DVC and MLflow state inside the project (never ~ or /var/tmp)."""
    state = (root / ".onevision").resolve()
    return {
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "DVC_SITE_CACHE_DIR": str(state / "dvc-site-cache"),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{(root / 'mlflow.db').resolve()}",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "onevision",
    }


def apply_local_state_env(root: Path) -> None:
    for key, value in local_state_env(root).items():
        os.environ.setdefault(key, value)
    # Prefect refuses to start when its home folder cannot be created lazily.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


class WouldReplaceTrained(ConfigError):
    """A run would switch the data source or profile over trained outputs without the explicit flag."""


def trained_outputs(root: Path) -> list[str]:
    """Trained model folders under ``models/`` (what a switch of data or profile would overwrite)."""
    models = root / paths.MODELS
    return sorted(p.name for p in models.iterdir() if p.is_dir() and any(p.iterdir())) if models.is_dir() else []


def write_run_params(
    root: Path,
    profile: str | None,
    overrides: list[str] | tuple[str, ...],
    *,
    reset: bool = False,
    replace_trained: bool = False,
) -> dict[str, Any]:
    """Record this run's profile and overrides in params.yaml, as `dvc exp run --set-param` does.

    DVC reads params.yaml for change detection, so what the run uses must be
    written there; comments and layout are preserved. ``--set`` values are
    added to the recorded ``overrides`` (a later ``--set b=2`` keeps an earlier
    ``a=1``); ``reset`` drops the recorded ones first (the returned changes say
    what was dropped). A run that switches the profile or ``data.source`` while
    ``models/`` holds trained models raises :class:`WouldReplaceTrained` unless
    ``replace_trained``. Returns what changed.
    """
    path = root / PARAMS_FILE
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap the file's long lines: a retrain changes the keys it records, nothing else
    doc = yaml.load(path.read_text())
    current = _plain(doc.get("overrides") or {})
    tree = overrides_to_tree(overrides)
    base = {} if reset else current
    merged_tree = deep_merge(base, {k: v for k, v in tree.items() if k != "seed"})
    new_overrides = complete_overrides(merged_tree)
    # Validate before touching the file: a bad --set must not leave a broken params.yaml.
    before = load_config(path)
    after = load_config(path, profile=profile, overrides=overrides, file_overrides=new_overrides)
    switched = [
        f"{what} {old!r} -> {new!r}"
        for what, old, new in (("profile", before.profile, after.profile), ("data.source", before.data.source, after.data.source))
        if old != new
    ]
    trained = trained_outputs(root)
    if switched and trained and not replace_trained:
        raise WouldReplaceTrained(
            f"this run switches {' and '.join(switched)} while models/ holds trained models ({', '.join(trained)}); "
            "retraining would replace them. Pass --replace-trained to go ahead (DVC's cache keeps the current "
            "models: switching back and rerunning restores them from its run cache without training), or train "
            "the other setting in a copy of the project"
        )
    changes: dict[str, Any] = {}
    if profile is not None and doc.get("profile") != profile:
        changes["profile"] = (doc.get("profile"), profile)
        doc["profile"] = profile
    if "seed" in tree:  # a top-level value, not a section: written in place
        seed = tree["seed"]
        if doc.get("seed") != seed:
            changes["seed"] = (doc.get("seed"), seed)
            doc["seed"] = seed
    if reset:
        dropped = _leaves(current)
        if dropped:
            changes["dropped overrides"] = dropped
    if current != new_overrides:
        changes["overrides"] = (current, new_overrides)
        doc["overrides"] = new_overrides
    if changes:
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w") as fh:
            yaml.dump(doc, fh)
        tmp.replace(path)
    return changes


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """``{'data': {'n_users': 50}}`` -> ``['data.n_users=50']``."""
    out: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out.extend(_leaves(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}={value!r}")
    return out


def _plain(node: Any) -> Any:
    """ruamel's commented maps as plain dicts, for comparison."""
    return {k: _plain(v) for k, v in node.items()} if isinstance(node, dict) else node


def _dvc_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """The dvc command of this interpreter's environment, with its bin dir on PATH
    so that stage commands (`onevision stage run ...`) resolve to the same install."""
    bin_dir = Path(sys.executable).parent
    exe = bin_dir / "dvc"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # A stage's progress bars reach the flow log line by line: one update every 15 s, not 10 a second.
    env.setdefault("TQDM_MININTERVAL", "15")
    return [str(exe) if exe.exists() else "dvc", *args], env


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd, env = _dvc_command(*args)
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)


def stage_is_current(root: Path, stage: str) -> bool:
    """True when dvc.lock matches the stage's deps, params and outs (DVC would skip it)."""
    proc = _dvc(root, "status", "--json", stage)
    if proc.returncode != 0 and "had been killed" in proc.stderr + proc.stdout:
        # A dvc killed mid-stage (SIGKILL, OOM, a lost node) left its entry in .dvc/tmp/rwlock; this call removed
        # it (and said so, exiting 1): ask again, so a crashed run resumes on the first try.
        log.warning("dvc: removed the lock of a dvc process that was killed; checking '%s' again", stage)
        proc = _dvc(root, "status", "--json", stage)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc status {stage} failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
    status = json.loads(proc.stdout or "{}")
    return stage not in status


@dataclass
class StageOutcome:
    stage: str
    skipped: bool
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


class StageFailed(RuntimeError):
    """A stage's command failed; the message carries its output's tail."""


def reproduce_stage(root: Path, stage: str) -> None:
    """`dvc repro --single-item STAGE`, streaming DVC's output to the log."""
    cmd, env = _dvc_command("repro", "--single-item", stage)
    # Its own process group: a stop (SIGTERM / Ctrl-C of the flow) reaches dvc and the stage under it.
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    tail: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                log.info("[%s] %s", stage, line)
                tail = (tail + [line])[-40:]
    except BaseException:  # the flow is being stopped (Prefect's TerminationSignal, KeyboardInterrupt, ...)
        log.warning("stopping stage '%s': dvc keeps no output of an unfinished stage (dvc.lock is not updated), "
                    "so the next run reruns it", stage)
        stop_process_group(proc)
        raise
    if proc.wait() != 0:
        raise StageFailed(f"stage '{stage}' failed (dvc repro exit {proc.returncode}):\n" + "\n".join(tail))


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Interrupt ``proc``'s process group as Ctrl-C would (dvc then releases its lock), then SIGTERM, then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def read_stage_metrics(root: Path, stage: str) -> dict[str, Any]:
    path = root / paths.metrics_file(stage)
    return json.loads(path.read_text()) if path.exists() else {}


def execute_stage(root: Path, stage: str, tracker=None, parent_run_id: str | None = None) -> StageOutcome:
    """Run one stage through DVC (or skip it when unchanged) and log a nested MLflow run."""

    cfg = load_config(root / PARAMS_FILE)
    run_id = None
    if tracker is not None and parent_run_id is not None:
        run_id = tracker.start_child(parent_run_id, stage, {"git_revision": git_revision(root)})
        tracker.log_params(run_id, {s: cfg.section(s) for s in declaration(stage).sections})
    t0 = time.perf_counter()
    try:
        skipped = stage_is_current(root, stage)
        if skipped:
            log.info("stage '%s' unchanged (dvc.lock matches its deps, params and outs): skipped", stage)
        else:
            log.info("stage '%s' changed: running it through dvc repro", stage)
            reproduce_stage(root, stage)
    except Exception as exc:
        if run_id is not None:
            tracker.set_tags(run_id, {"error": str(exc)[:4000]})
            report = root / paths.REPORTS / f"{stage}.md"
            tracker.log_artifact(run_id, report, "reports")
            tracker.finish(run_id, "FAILED")
        raise
    seconds = time.perf_counter() - t0
    metrics = read_stage_metrics(root, stage)
    if run_id is not None:
        lock_hash = dvc_lock_hashes(root).get(stage, "")
        tracker.set_tags(run_id, {"skipped": str(skipped).lower(), "dvc.deps_hash": lock_hash})
        tracker.log_metrics(run_id, {**metrics, "wall_seconds": seconds})
        tracker.log_artifact(run_id, root / paths.metrics_file(stage), "metrics")
        tracker.log_artifact(run_id, root / paths.REPORTS / f"{stage}.md", "reports")
        for rel in declaration(stage).mlflow_artifacts:
            tracker.log_artifact(run_id, root / rel, str(Path(rel).parent))
        tracker.finish(run_id)
    return StageOutcome(stage, skipped, seconds, metrics, run_id)


class PushFailed(RuntimeError):
    """`dvc push` failed; the message says where to and what dvc said."""


def default_remote(root: Path) -> str | None:
    """The DVC remote `dvc push` uses without -r (core.remote), or None when none is set."""
    proc = _dvc(root, "remote", "default")
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def _without_userinfo(url: str) -> str:
    """``scheme://user:password@host/path`` without ``user:password@`` (a remote URL may carry credentials)."""

    parts = urlsplit(url)
    if not parts.netloc or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def push_outputs(root: Path, remote: str | None = None) -> dict[str, Any]:
    """`dvc push` every stage output in dvc.lock to ``remote`` (default: the project's default remote).

    The remote's credentials come from its own configuration chain (for S3: the standard AWS chain), never from
    here. Returns ``{"remote": name, "url": url, "seconds": s}``; raises :class:`PushFailed` with dvc's message.
    """
    name = remote or default_remote(root)
    if not name:
        raise PushFailed("no DVC remote to push to: set one with `dvc remote add -d NAME URL` (infra/README.md), "
                         "or run without --push")
    remotes = dict(line.split(None, 1) for line in _dvc(root, "remote", "list").stdout.splitlines() if len(line.split(None, 1)) == 2)
    url = _without_userinfo(remotes.get(name, "").strip())
    t0 = time.perf_counter()
    proc = _dvc(root, "push", "-r", name)
    if proc.returncode != 0:
        said = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-8:])
        raise PushFailed(f"dvc push to remote '{name}' ({url or 'unknown url'}) failed:\n{said}\n"
                         "Check the remote's endpoint and credentials (`dvc remote list`, the AWS environment), then "
                         "rerun: finished stages are skipped and only the missing outputs are pushed.")
    seconds = time.perf_counter() - t0
    log.info("dvc push to '%s' (%s): %s (%.1f s)", name, url, (proc.stdout.strip().splitlines() or ["done"])[-1], seconds)
    return {"remote": name, "url": url, "seconds": seconds}
