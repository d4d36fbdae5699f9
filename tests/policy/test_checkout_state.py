"""The tests build their projects from the default params.yaml and dvc.yaml (tests/support/defaults.py), never from the
experiment state that `onevision retrain` records in the checkout (`make demo` leaves a small-profile one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onevision.config import load_config
from onevision.pipeline import write_run_params
from onevision.stagegraph import sync_dvc_yaml
from tests import REPO
from tests.support.defaults import default_dvc_yaml_text, default_params_text, without_run_state

# A retrain that records all three kinds of run state: a profile, a recorded --set, a seed.
RETRAIN = ("small", ["data.n_users=50", "seed=3"])


def retrain_edit(root: Path, profile: str = RETRAIN[0], overrides: list[str] = RETRAIN[1]) -> None:
    """What `onevision retrain --profile PROFILE --set ... --replace-trained` writes before its first stage
    (onevision/app/flows/retrain.py): the run in params.yaml, then dvc.yaml regenerated for it."""
    write_run_params(root, profile, overrides, replace_trained=True)
    sync_dvc_yaml(root, load_config(root / "params.yaml"))


def retrained_copy(dest: Path, *parts: str) -> Path:
    """``parts`` of the checkout and its params.yaml / dvc.yaml copied to ``dest``, then edited by a retrain."""
    dest.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", *parts):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        else:
            shutil.copy2(REPO / name, dest / name)
    retrain_edit(dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    assert (params["profile"], params["seed"], params["overrides"]["data"]) == ("small", 3, {"n_users": 50})
    assert "profiles.small.data" in (dest / "dvc.yaml").read_text()  # dvc.yaml followed the profile
    return dest


def test_the_defaults_undo_what_a_retrain_records(tmp_path):
    copy = retrained_copy(tmp_path / "copy")
    assert default_params_text(copy) == default_params_text(REPO)
    assert default_dvc_yaml_text(copy) == default_dvc_yaml_text(REPO)
    defaults = yaml.safe_load(default_params_text(copy))
    assert (defaults["profile"], defaults["seed"], defaults["overrides"]["data"]) == ("default", 0, {})
    assert "profiles." not in default_dvc_yaml_text(copy)
    # a pristine file comes back as it is, byte for byte (comments, nulls, layout)
    assert without_run_state(default_params_text(REPO)) == default_params_text(REPO)


def _committed(name: str) -> str:
    proc = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout with {name} committed: {proc.stderr.strip()}")
    return proc.stdout


def test_the_committed_files_record_no_run():
    """A checkout's run state is never committed (e.g. `git commit -a` after `make demo`): the committed
    params.yaml is its own default, and the committed dvc.yaml watches no profile's keys."""
    params = _committed("params.yaml")
    assert without_run_state(params) == params, "params.yaml is committed with a retrain's profile, seed or overrides"
    assert "profiles." not in _committed("dvc.yaml"), "dvc.yaml is committed for a profile other than default"


@pytest.mark.slow
def test_configuration_and_stage_graph_tests_pass_in_a_retrained_checkout(tmp_path):
    """`make demo` then `make test`, for the tests of params.yaml and dvc.yaml: they run in a copy of the checkout
    whose params.yaml and dvc.yaml a retrain has edited."""
    copy = retrained_copy(tmp_path / "checkout", "onevision", "tests", "pyproject.toml")
    files = ["tests/code/test_config.py", "tests/code/test_pipeline.py", "tests/code/test_stagegraph.py"]
    env = {k: v for k, v in os.environ.items() if k != "ONEVISION_DRILL_LOG"}  # the outer session writes the log
    env["PYTHONPATH"] = str(copy)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "tmp"), *files],
        cwd=copy, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"rootdir: {copy}" in out, out[:2000]  # the copy's tests ran, on the copy's retrained files
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
