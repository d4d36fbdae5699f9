"""dvc.yaml's code deps are the stages' real import closures (onevision.stagegraph)."""

from pathlib import Path

import yaml

from onevision.stagegraph import import_closure, render_dvc_yaml, stage_code_deps
from onevision.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]


def test_committed_dvc_yaml_has_the_generated_code_deps():
    text = (ROOT / "dvc.yaml").read_text()
    assert render_dvc_yaml(text) == text, "dvc.yaml is stale: run `onevision stage dvc-deps` and commit it"


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
