"""Pipeline plumbing: run params written to params.yaml, stage selection, lock hashes."""

from __future__ import annotations

import pytest
import yaml

from onevision.config import ConfigError, load_config, section_names
from onevision.pipeline import stages_until, write_run_params
from onevision.stages import declaration, declarations, stage_names
from onevision.tracking import Tracker, dvc_lock_hashes, flatten, metric_key
from tests.support.defaults import default_dvc_yaml_text, default_params, default_params_file


def test_profile_and_overrides_are_written_keeping_comments(project):
    changes = write_run_params(project, "small", ["data.n_users=50"])
    assert changes["profile"] == ("default", "small")
    text = (project / "params.yaml").read_text()
    assert "# OneVision parameters" in text  # comments survive the round trip
    doc = yaml.safe_load(text)
    assert doc["profile"] == "small" and doc["overrides"]["data"] == {"n_users": 50}
    assert doc["overrides"]["split"] == {}  # every section keeps its slot (dvc.yaml names them)
    cfg = load_config(project / "params.yaml")
    assert (cfg.profile, cfg.data.n_items, cfg.data.n_users) == ("small", 2000, 50)
    # nothing to change: file untouched
    assert write_run_params(project, "small", ["data.n_users=50"]) == {}


def test_invalid_override_leaves_params_untouched(project):
    before = (project / "params.yaml").read_text()
    with pytest.raises(ConfigError):
        write_run_params(project, None, ["data.n_users=-3"])
    assert (project / "params.yaml").read_text() == before


def test_stages_until():
    assert stages_until(None) == list(stage_names())
    assert stages_until("validate") == ["prepare", "validate"]
    with pytest.raises(ConfigError, match="unknown stage"):
        stages_until("deploy")


def test_every_stage_is_in_dvc_yaml_with_its_params():
    dvc = yaml.safe_load(default_dvc_yaml_text())["stages"]
    assert list(dvc) == list(stage_names())
    for name, stage in dvc.items():
        assert stage["cmd"] == f"onevision stage run {name}"
        params = set(stage["params"])
        assert {"seed", "profile"} <= params and "profiles" not in params, name
        sections = declaration(name).sections
        assert {s for s in params if s.startswith("overrides.")} == {f"overrides.{s}" for s in sections}, name
        assert set(declaration(name).reads) <= params, name


def test_params_yaml_has_an_override_slot_per_section():
    doc = default_params()
    assert set(doc["overrides"]) == set(section_names())


def test_lock_hashes_change_with_deps(tmp_path):
    lock = {"schema": "2.0", "stages": {"prepare": {"cmd": "x", "deps": [{"path": "a.py", "md5": "1"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    first = dvc_lock_hashes(tmp_path)["prepare"]
    lock["stages"]["prepare"]["deps"][0]["md5"] = "2"
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvc_lock_hashes(tmp_path)["prepare"] != first
    assert dvc_lock_hashes(tmp_path / "missing") == {}


def test_flatten():
    assert flatten("", {"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_metric_names_become_names_mlflow_accepts():
    assert metric_key("val_hr@10_mca") == "val_hr_at_10_mca"
    assert metric_key("a.b/c:d e-f") == "a.b/c:d e-f"
    assert metric_key("x(y)") == "x_y_"


def test_stage_metrics_reach_mlflow_with_history_as_stepped_curves(tmp_path):
    tracker = Tracker(tmp_path, "t", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.log_metrics(run_id, {
        "hr@10": 0.5, "name": "text is skipped",
        "history": {"e01": {"loss": 2.0}, "e02": {"loss": 1.0}},
        "probe": {"history": {"e03": {"top1": 0.7}}},
    })
    run = tracker.client.get_run(run_id)
    assert run.data.metrics == {"hr_at_10": 0.5, "curve.loss": 1.0, "curve.probe.top1": 0.7}
    steps = [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, "curve.loss")]
    assert sorted(steps) == [(1, 2.0), (2, 1.0)]


def test_seed_override_is_written_in_place(project):
    changes = write_run_params(project, None, ["seed=7"])
    assert changes["seed"] == (0, 7)
    doc = yaml.safe_load((project / "params.yaml").read_text())
    assert doc["seed"] == 7 and "seed" not in doc["overrides"]


def test_artifacts_logged_to_mlflow_are_outputs_of_their_stage_in_dvc_yaml():
    stages = yaml.safe_load(default_dvc_yaml_text())["stages"]
    for stage in declarations().values():
        declared = [*stages[stage.name].get("outs", []), *stages[stage.name].get("plots", []), *stages[stage.name].get("metrics", [])]
        declared = [d if isinstance(d, str) else next(iter(d)) for d in declared]
        for rel in stage.mlflow_artifacts:
            assert any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in declared), (stage.name, rel)


def test_a_second_set_keeps_the_first(project):
    write_run_params(project, None, ["data.n_users=50"])
    write_run_params(project, None, ["mca.recall_k=400"])
    cfg = load_config(project / "params.yaml")
    assert (cfg.data.n_users, cfg.mca.recall_k) == (50, 400)
    # the same key again changes it, the other stays
    write_run_params(project, None, ["data.n_users=60"])
    cfg = load_config(project / "params.yaml")
    assert (cfg.data.n_users, cfg.mca.recall_k) == (60, 400)


def test_reset_drops_the_recorded_overrides_and_says_which(project):
    write_run_params(project, None, ["data.n_users=50", "mca.recall_k=400"])
    changes = write_run_params(project, None, ["split.val_fraction=0.2"], reset=True)
    assert sorted(changes["dropped overrides"]) == ["data.n_users=50", "mca.recall_k=400"]
    cfg = load_config(project / "params.yaml")
    assert cfg.data.n_users == load_config(default_params_file()).data.n_users
    assert cfg.split.val_fraction == 0.2


def test_switching_profile_over_trained_models_needs_the_flag(project):
    from onevision.pipeline import WouldReplaceTrained

    (project / "models" / "vrq").mkdir(parents=True)
    (project / "models" / "vrq" / "vrq.pt").write_bytes(b"trained")
    before = (project / "params.yaml").read_text()
    with pytest.raises(WouldReplaceTrained, match="--replace-trained"):
        write_run_params(project, "small", [])
    with pytest.raises(WouldReplaceTrained, match="data.source"):
        write_run_params(project, None, ["data.source=import", "data.import_dir=x", "data.import_catalog_csv=x.csv"])
    assert (project / "params.yaml").read_text() == before
    # other changes on the same profile are fine, and the flag lets a switch through
    write_run_params(project, None, ["data.n_users=50"])
    assert write_run_params(project, "small", [], replace_trained=True)["profile"] == ("default", "small")


def test_dvc_metrics_show_prints_only_the_headline():
    stages = yaml.safe_load(default_dvc_yaml_text())["stages"]
    declared = [next(iter(m)) if isinstance(m, dict) else m for spec in stages.values() for m in spec.get("metrics", [])]
    assert declared == ["metrics/headline.json"]
    for name, spec in stages.items():  # each stage's full metrics stay a tracked output
        assert f"metrics/{name}.json" in spec["outs"], name


def test_headline_is_short():
    from onevision.comparison.stage import headline

    row = {"hr@10": 0.86, "ndcg@10": 0.69, "sim_orders_per_1k": 240.0, "latency_p50_ms": 2.8, "stages": {"x": 1}, "mrr": 0.6}
    out = headline({"onevision": row, "mca": {**row, "hr@10": 0.85}, "knn": row})
    assert set(out) == {"hr@10", "orders", "ndcg@10", "p50_ms"}
    assert out["hr@10"] == {"onevision": 0.86, "mca": 0.85, "ratio": round(0.86 / 0.85, 4)}
    assert sum(len(v) for v in out.values()) == 8  # columns of `dvc metrics show`
