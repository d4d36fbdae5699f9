"""The whole retrain flow, prepare → … → evaluate, on a shrunken small profile: the wiring, not the quality.

Quality is asserted by the model-behaviour tests and measured by
benchmarks/offline_eval.py; here every stage must run for real through
Prefect, DVC and MLflow, hand its outputs to the next one, and end in an
evaluation where OneVision stands beside MCA and the references.
"""

from __future__ import annotations

import json

import pytest

from onevision.stages import stage_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PIPELINE = stage_names()

REFERENCES = ("mca", "mca_no_ranker", "knn", "popularity", "random")
ONEVISION = ("onevision", "onevision_sft", "onevision_pretrain")


@pytest.fixture(scope="module")
def full_run(tiny_full_run):
    return tiny_full_run


def test_every_stage_ran_in_order(full_run):
    project, outcomes = full_run
    assert [o["stage"] for o in outcomes] == list(PIPELINE)
    assert not any(o["skipped"] for o in outcomes)
    for stage in PIPELINE:
        assert (project / "metrics" / f"{stage}.json").exists(), stage


def test_evaluation_has_onevision_beside_mca_and_the_references(full_run):
    project, _ = full_run
    results = json.loads((project / "metrics/evaluate.json").read_text())
    expected = set(REFERENCES) | set(ONEVISION)
    if "calibrate_pruning" in PIPELINE:
        expected.add("onevision_pruned")
    assert expected <= set(results), sorted(results)
    for name in expected:
        row = results[name]
        for key in ("hr@1", "hr@10", "hr@50", "ndcg@10", "mrr", "click_hr@10", "order_mrr@10",
                    "sim_orders_per_1k", "sim_orders_per_1k_ci_lo", "latency_p95_ms", "qps"):
            assert key in row, (name, key)
    chance = results["random"]["hr@10"]
    for name in REFERENCES[:3]:  # the embedding-based systems beat chance by far
        assert results[name]["hr@10"] > 5 * chance + 0.05, name
    for name in expected & {*ONEVISION, "onevision_pruned"}:  # two epochs of pretraining already learn something
        assert results[name]["hr@10"] > 3 * chance, name
    for name in expected & {*ONEVISION, "onevision_pruned"}:
        assert results[name]["invalid_sid_rate"] == 0.0 and results[name]["generated_sids"] > 0, name


def test_tokenizer_and_generative_outputs_follow_their_contracts(full_run):
    import pandas as pd

    project, _ = full_run
    sids = pd.read_parquet(project / "data/sids/sid_table.parquet")
    codes = [c for c in sids.columns if c.startswith("code_")]
    assert not sids.duplicated(codes).any()  # unique SID per item
    items = pd.read_parquet(project / "data/validated/items.parquet")
    assert set(sids["item_id"]) == set(items["item_id"])
    for stage in ("pretrain", "sft", "dpo"):
        assert (project / "models/generative" / stage / "config.json").exists()
    dpo = json.loads((project / "metrics/dpo.json").read_text())
    assert 0.0 <= dpo["preference_accuracy"] <= 1.0 and dpo["catalog_kl_to_reference"] >= 0.0


def test_mlflow_records_a_nested_run_per_stage_with_curves(full_run):
    from mlflow.tracking import MlflowClient

    project, _ = full_run
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("onevision-retrain")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    nested = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(nested) == set(PIPELINE)
    assert parent.data.tags["stages_ran"] == ",".join(PIPELINE)
    assert nested["evaluate"].data.metrics["mca.hr_at_10"] == pytest.approx(
        json.loads((project / "metrics/evaluate.json").read_text())["mca"]["hr@10"])
    plots = {a.path for a in client.list_artifacts(nested["evaluate"].info.run_id, "plots")}
    assert plots == {"plots/evaluate_quality_latency.png", "plots/evaluate_per_k.png"}
    assert [a.path for a in client.list_artifacts(nested["pretrain"].info.run_id, "plots")] == ["plots/pretrain.png"]
    history = client.get_metric_history(nested["pretrain"].info.run_id, "curve.loss")
    assert sorted(m.step for m in history) == [1, 2]  # per-epoch training curve


def test_rerun_with_nothing_changed_skips_every_stage(full_run):
    from tests.support.flows import load

    retrain = load("retrain.py:retrain")

    project, _ = full_run
    outcomes = retrain(root=str(project))
    assert all(o["skipped"] for o in outcomes), [o["stage"] for o in outcomes if not o["skipped"]]


@pytest.mark.skipif("calibrate_pruning" not in PIPELINE, reason="no pruning stage")
def test_pruning_calibration_chose_a_pareto_point_within_the_bound(full_run):
    project, _ = full_run
    result = json.loads((project / "metrics/pruning.json").read_text())
    labels = [p["label"] for p in result["points"]]
    assert result["chosen"]["label"] in labels and result["chosen"]["label"] in result["pareto"] + [result["unpruned"]["label"]]
    assert all(loss <= 0.01 + 1e-9 for loss in result["quality_loss"].values() if loss is not None)
    assert result["speedup"]["batch1_p50_ms"] > 0
    assert (project / "models/pruning").is_dir() and (project / "plots/pruning_pareto.png").exists()
