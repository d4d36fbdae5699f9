"""dvc.yaml's code deps are the stages' real import closures (onevision.stagegraph)."""

from pathlib import Path

import pytest
import yaml

from onevision.config import ConfigError, load_config
from onevision.stagegraph import import_closure, render_dvc_yaml, stage_code_deps, sync_dvc_yaml
from onevision.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]


def test_committed_dvc_yaml_has_the_generated_code_deps():
    text = (ROOT / "dvc.yaml").read_text()
    cfg = load_config(ROOT / "params.yaml")
    assert render_dvc_yaml(text, cfg) == text, "dvc.yaml is stale: run `onevision stage dvc-deps` and commit it"


def test_every_stage_is_in_dvc_yaml_with_its_closure():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)
    for name, spec in stages.items():
        assert set(stage_code_deps(name)) <= set(spec["deps"]), name


def test_stages_that_probe_with_the_simulator_depend_on_it():
    for stage in ("pretrain", "sft", "dpo", "calibrate_pruning", "evaluate", "mca"):
        deps = stage_code_deps(stage)
        assert "onevision/data/simulator.py" in deps, stage
        assert "onevision/evaluation/metrics.py" in deps, stage
    assert "onevision/evaluation/cost.py" in stage_code_deps("mca")


def test_function_level_imports_are_followed():
    closure = {p.as_posix() for p in import_closure("onevision.generative.stages")}
    # stages.py imports the simulator only inside probe()
    assert any(p.endswith("onevision/data/simulator.py") for p in closure)


def test_render_replaces_only_code_deps():
    text = (
        "stages:\n  prepare:\n    cmd: x\n    deps:\n      - data/raw\n      - onevision/old.py\n"
        "    params:\n      - seed\n    outs:\n      - data/prepared\n"
    )
    out = render_dvc_yaml(text)
    spec = yaml.safe_load(out)["stages"]["prepare"]
    assert spec["deps"][0] == "data/raw"
    assert "onevision/old.py" not in spec["deps"]
    assert "onevision/data/stages.py" in spec["deps"]
    assert spec["params"] == ["seed"] and spec["outs"] == ["data/prepared"]


def _import_cfg(tmp_path, **data):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    sets = [f"data.{k}={v}" for k, v in {"source": "import", **data}.items()]
    return load_config(tmp_path / "params.yaml", overrides=sets)


def test_an_imported_catalog_is_a_dep_of_prepare_only(tmp_path):
    cfg = _import_cfg(tmp_path, import_dir="my-data/photos", import_catalog_csv="my-data/catalog.csv",
                      import_queries_csv="my-data/queries.csv")
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    assert sync_dvc_yaml(tmp_path, cfg)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    inputs = ["my-data/catalog.csv", "my-data/queries.csv", "my-data/photos"]
    assert stages["prepare"]["deps"][:3] == inputs
    assert all(dep not in stages[name]["deps"] for name in stages if name != "prepare" for dep in inputs)
    assert not sync_dvc_yaml(tmp_path, cfg)  # idempotent
    # back to the demo: the import deps go again, the file is the committed one
    assert sync_dvc_yaml(tmp_path, load_config(ROOT / "params.yaml"))
    assert (tmp_path / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()


def test_prepare_refuses_an_import_dvc_cannot_see(tmp_path):
    from onevision.data.stages import prepare

    cfg = _import_cfg(tmp_path, import_dir="photos", import_catalog_csv="catalog.csv")
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    with pytest.raises(ConfigError, match="onevision stage dvc-deps"):
        prepare(cfg, tmp_path)
