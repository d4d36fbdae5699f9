"""dvc.yaml is generated from the stage declarations: code deps are the stages' real import closures, params
the keys each stage reads in the active profile (onevision.stagegraph); DVC itself confirms the graph."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onevision.config import ConfigError, load_config
from onevision.stagegraph import (
    import_closure,
    read_params,
    render_dvc_yaml,
    stage_code_deps,
    stage_params,
    sync_dvc_yaml,
)
from onevision.stages import Stage, declaration, declarations, stage_names
from tests import REPO
from tests.support.defaults import default_dvc_yaml_text, write_defaults

ROOT = REPO
DVC = str(Path(sys.executable).with_name("dvc"))


def test_committed_dvc_yaml_is_the_generated_one():
    # the checkout's own pair, which a retrain rewrites together (tests/policy/test_checkout_state.py checks the commit)
    cfg = load_config(ROOT / "params.yaml")
    assert render_dvc_yaml(cfg, read_params(ROOT)) == (ROOT / "dvc.yaml").read_text(), (
        "dvc.yaml is stale: run `onevision stage dvc-yaml` and commit it")


def test_every_declared_stage_is_in_dvc_yaml_with_its_closure():
    stages = yaml.safe_load(default_dvc_yaml_text())["stages"]
    assert list(stages) == list(stage_names())
    for name, spec in stages.items():
        assert set(stage_code_deps(name)) <= set(spec["deps"]), name
        assert f"metrics/{name}.json" in spec["outs"], name


def test_each_stage_is_declared_in_its_packages_stage_module():
    for stage in declarations().values():
        declaring = [m for m in ("data", "encoder", "vrq", "mca", "generative", "comparison")
                     if any(s.name == stage.name for s in __import__(f"onevision.{m}.stage", fromlist=["STAGES"]).STAGES)]
        assert len(declaring) == 1, stage.name
        assert callable(stage.function()), stage.name
    with pytest.raises(KeyError, match="unknown stage 'deploy'"):
        declaration("deploy")


def test_stages_that_probe_with_the_simulator_depend_on_it():
    for stage in ("pretrain", "sft", "dpo", "calibrate_pruning", "evaluate", "mca"):
        deps = stage_code_deps(stage)
        assert "onevision/data/simulator.py" in deps, stage
        assert "onevision/evaluation/metrics.py" in deps, stage
    assert "onevision/evaluation/cost.py" in stage_code_deps("mca")


def test_function_level_imports_are_followed():
    closure = {p.as_posix() for p in import_closure("onevision.generative.stage")}
    # stage.py imports the simulator only inside probe()
    assert any(p.endswith("onevision/data/simulator.py") for p in closure)


def test_params_are_the_read_keys_in_each_layer():
    stage = Stage("s", "m:f", reads=("data", "generative.model", "evaluate.shown"))
    params = {"profile": "small", "profiles": {"small": {"data": {"n_items": 5}, "generative": {"model": {"d": 1}},
                                                         "evaluate": {"bootstrap": 9}},
                                               "other": {"vrq": {"x": 1}}}}
    assert stage_params(stage, params) == [
        "seed", "profile", "data", "generative.model", "evaluate.shown",
        "overrides.data", "overrides.generative", "overrides.evaluate",
        # evaluate.shown is not set by the profile: DVC refuses a key params.yaml lacks
        "profiles.small.data", "profiles.small.generative.model",
    ]
    # the default profile is the sections themselves: no profiles.* key at all
    assert not [k for k in stage_params(stage, {**params, "profile": "default"}) if k.startswith("profiles")]


def _import_cfg(tmp_path, **data):
    write_defaults(tmp_path)
    sets = [f"data.{k}={v}" for k, v in {"source": "import", **data}.items()]
    return load_config(tmp_path / "params.yaml", overrides=sets)


def test_an_imported_catalog_is_a_dep_of_prepare_only(tmp_path):
    cfg = _import_cfg(tmp_path, import_dir="my-data/photos", import_catalog_csv="my-data/catalog.csv",
                      import_queries_csv="my-data/queries.csv")
    (tmp_path / "dvc.yaml").write_text(default_dvc_yaml_text())
    assert sync_dvc_yaml(tmp_path, cfg)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    inputs = ["my-data/catalog.csv", "my-data/queries.csv", "my-data/photos"]
    assert stages["prepare"]["deps"][:3] == inputs
    assert all(dep not in stages[name]["deps"] for name in stages if name != "prepare" for dep in inputs)
    assert not sync_dvc_yaml(tmp_path, cfg)  # idempotent
    # back to the demo: the import deps go again, the file is the default one
    assert sync_dvc_yaml(tmp_path, load_config(tmp_path / "params.yaml"))
    assert (tmp_path / "dvc.yaml").read_text() == default_dvc_yaml_text()


def test_prepare_refuses_an_import_dvc_cannot_see(tmp_path):
    from onevision.data.stage import prepare

    cfg = _import_cfg(tmp_path, import_dir="photos", import_catalog_csv="catalog.csv")
    (tmp_path / "dvc.yaml").write_text(default_dvc_yaml_text())
    with pytest.raises(ConfigError, match="onevision stage dvc-yaml"):
        prepare(cfg, tmp_path)


# --------------------------------------------------------------------------- DVC's own view of the graph


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(root / ".dvc-site-cache")}
    return subprocess.run([DVC, *args], cwd=root, env=env, capture_output=True, text=True, check=False)


def _changed(root: Path) -> set[str]:
    proc = _dvc(root, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    return set(json.loads(proc.stdout or "{}"))


def _fake_outputs(root: Path) -> None:
    """Every declared output as a placeholder file or folder (the graph, not the content, is under test)."""
    for stage in declarations().values():
        for out in (*stage.outs, stage.metrics_file, *stage.plots, *stage.metrics):
            path = root / out
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{out}\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder").write_text(f"{out}\n")
    (root / "data/validated/queries.parquet").write_text("q\n")
    for name in ("items", "views"):
        (root / f"data/validated/{name}.parquet").write_text(f"{name}\n")


@pytest.fixture
def committed_project(tmp_path) -> Path:
    """A project whose dvc.lock records every stage as current: the default params.yaml and dvc.yaml
    (tests/support/defaults.py), a copy of the package, placeholder outputs, `dvc commit` (no stage runs)."""
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copytree(ROOT / "onevision", root / "onevision", ignore=shutil.ignore_patterns("__pycache__"))
    write_defaults(root, ("params.yaml", "dvc.yaml"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    assert _dvc(root, "init", "-q").returncode == 0
    _fake_outputs(root)
    proc = _dvc(root, "commit", "--force", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert _changed(root) == set()
    return root


def _edit_params(root: Path, edit) -> None:
    doc = yaml.safe_load((root / "params.yaml").read_text())
    edit(doc)
    (root / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.slow
def test_dvc_sees_exactly_the_stages_a_change_touches(committed_project):
    root = committed_project
    simulator = root / "onevision/data/simulator.py"
    original = simulator.read_text()
    simulator.write_text(original + "\n# touched\n")
    changed = _changed(root)
    assert {"pretrain", "sft", "dpo", "calibrate_pruning", "evaluate", "mca"} <= changed, changed
    assert all("onevision/data/simulator.py" in stage_code_deps(s) for s in changed), changed
    simulator.write_text(original)
    assert _changed(root) == set()

    # another profile's edits change nothing for a default-profile project
    _edit_params(root, lambda d: d["profiles"]["small"]["data"].update(n_items=123))
    _edit_params(root, lambda d: d["profiles"]["small"].setdefault("split", {}).update(val_fraction=0.3))
    assert _changed(root) == set()

    # a section's edit changes only the stages that read it
    _edit_params(root, lambda d: d["vrq"].update(kmeans_iters=d["vrq"]["kmeans_iters"] + 1))
    assert _changed(root) == {"vrq"}


@pytest.mark.slow
def test_a_small_profile_project_watches_its_own_profile_only(committed_project):
    root = committed_project
    _edit_params(root, lambda d: d.update(profile="small"))
    cfg = load_config(root / "params.yaml")
    assert sync_dvc_yaml(root, cfg)
    assert _changed(root) == set(stage_names())  # a profile switch reruns everything
    assert _dvc(root, "commit", "--force", "--quiet").returncode == 0
    assert _changed(root) == set()
    _edit_params(root, lambda d: d["profiles"]["catalog"]["vrq"].update(codebook_sizes=[8, 8, 8]))
    assert _changed(root) == set()
    _edit_params(root, lambda d: d["profiles"]["small"]["vrq"].update(codebook_sizes=[64, 32, 16]))
    assert _changed(root) == {"vrq"}
