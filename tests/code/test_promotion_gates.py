"""Promotion gates: pure logic over metrics dicts (no MLflow), and the inputs read from a project root."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from onevision.config import Config, GatesConfig
from onevision.promotion.gates import GateInputs, candidate_metrics, collect_gate_inputs, evaluate_gates, lookup
from onevision.promotion.workflow import ReviewerNotAllowed, authorize_reviewer
from onevision.tracking import metric_key

GATES = GatesConfig()
CANDIDATE = {"hr@10": 0.62, "ndcg@10": 0.45, "sim_orders_per_1k": 31.0, "latency_p95_ms": 20.0, "invalid_sid_rate": 0.0}
MCA = {"hr@10": 0.60, "ndcg@10": 0.44, "sim_orders_per_1k": 30.0, "latency_p95_ms": 9.0}


def inputs(**changes) -> GateInputs:
    base = dict(candidate=dict(CANDIDATE), baseline=dict(MCA), tokenizer={"cur_min": 0.5}, sid_duplicates=0, validation={"passed": True})
    base.update(changes)
    return GateInputs(**base)


def gate(report, name):
    return next(r for r in report.results if r.name == name)


def test_good_candidate_passes_every_gate():
    report = evaluate_gates(inputs(), GATES)
    assert report.passed, [(r.name, r.reason) for r in report.failed]
    assert [r.name for r in report.results] == [
        "baseline.hr@10", "baseline.ndcg@10", "baseline.orders", "champion.hr@10", "champion.ndcg@10", "champion.orders",
        "invalid_sid_rate", "latency_p95", "tokenizer.unique_sids", "tokenizer.codebook_usage", "data_validation",
    ]
    assert gate(report, "champion.hr@10").reason.startswith("no champion yet")


def test_quality_below_mca_beyond_tolerance_fails_within_tolerance_passes():
    within = evaluate_gates(inputs(candidate={**CANDIDATE, "hr@10": 0.60 * 0.985}), GATES)  # 1.5% below, tolerance 2%
    assert gate(within, "baseline.hr@10").passed
    below = evaluate_gates(inputs(candidate={**CANDIDATE, "hr@10": 0.60 * 0.97}), GATES)
    g = gate(below, "baseline.hr@10")
    assert not g.passed and not below.passed
    assert g.threshold == pytest.approx(0.588) and "mca 0.6" in g.reason


def test_simulated_orders_must_not_fall_below_mca():
    report = evaluate_gates(inputs(candidate={**CANDIDATE, "sim_orders_per_1k": 29.9}), GATES)
    assert not gate(report, "baseline.orders").passed
    assert evaluate_gates(inputs(candidate={**CANDIDATE, "sim_orders_per_1k": 30.0}), GATES).passed


def test_regression_against_champion_is_read_from_its_metrics():
    champion = {"hr@10": 0.70, "ndcg@10": 0.45, "sim_orders_per_1k": 31.0}
    report = evaluate_gates(inputs(champion=champion, champion_version="3"), GATES)
    g = gate(report, "champion.hr@10")
    assert not g.passed and "champion v3" in g.reason
    assert gate(report, "champion.ndcg@10").passed and gate(report, "champion.orders").passed


def test_champion_without_recorded_metric_is_a_failed_gate_not_a_crash():
    report = evaluate_gates(inputs(champion={}, champion_version="2"), GATES)
    assert not gate(report, "champion.hr@10").passed
    assert "v2 has no 'hr@10'" in gate(report, "champion.hr@10").reason


def test_invalid_sid_rate_must_be_exactly_zero_with_probe_fallback():
    assert not gate(evaluate_gates(inputs(candidate={**CANDIDATE, "invalid_sid_rate": 1e-4}), GATES), "invalid_sid_rate").passed
    no_rate = {k: v for k, v in CANDIDATE.items() if k != "invalid_sid_rate"}
    missing = gate(evaluate_gates(inputs(candidate=no_rate), GATES), "invalid_sid_rate")
    assert not missing.passed and "found in neither" in missing.reason
    from_probe = gate(evaluate_gates(inputs(candidate=no_rate, generative={"probe": {"invalid_sid_rate": 0.0}}), GATES), "invalid_sid_rate")
    assert from_probe.passed and "probe" in from_probe.reason


def test_latency_budget():
    assert not gate(evaluate_gates(inputs(candidate={**CANDIDATE, "latency_p95_ms": 150.0}), GATES), "latency_p95").passed
    tight = GatesConfig(latency_budget_ms=10.0)
    assert not evaluate_gates(inputs(), tight).passed


def test_tokenizer_health_and_data_validation():
    assert not gate(evaluate_gates(inputs(sid_duplicates=4), GATES), "tokenizer.unique_sids").passed
    assert not gate(evaluate_gates(inputs(tokenizer={"cur_min": 0.01}), GATES), "tokenizer.codebook_usage").passed
    nested = GatesConfig(codebook_usage_metric="final.cur_min")
    assert gate(evaluate_gates(inputs(tokenizer={"final": {"cur_min": 0.4}}), nested), "tokenizer.codebook_usage").passed
    assert not gate(evaluate_gates(inputs(validation={"passed": False}), GATES), "data_validation").passed
    no_flag = gate(evaluate_gates(inputs(validation={"rows": 3}), GATES), "data_validation")
    assert not no_flag.passed and "no boolean 'passed'" in no_flag.reason


def test_metric_names_are_configurable():
    gates = GatesConfig(quality_metrics=["mrr"], orders_metric="sim_clicks_per_1k", latency_metric="latency_p99_ms")
    cand = {**CANDIDATE, "mrr": 0.3, "sim_clicks_per_1k": 90.0, "latency_p99_ms": 30.0}
    report = evaluate_gates(inputs(candidate=cand, baseline={"mrr": 0.29, "sim_clicks_per_1k": 80.0}), gates)
    assert report.passed, [(r.name, r.reason) for r in report.failed]
    assert "baseline.mrr" in [r.name for r in report.results]


def test_missing_inputs_fail_with_reasons_not_exceptions(tmp_path):
    report = evaluate_gates(collect_gate_inputs(Config(), tmp_path), GATES)
    assert not report.passed and not any(r.passed for r in report.results if not r.name.startswith("champion."))
    reasons = " ".join(r.reason for r in report.results)
    for text in ("metrics/evaluate.json not found", "metrics/vrq.json not found", "sid_table.parquet not found", "metrics/validate.json not found"):
        assert text in reasons


def test_inputs_from_a_project_root(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps({"onevision": CANDIDATE, "knn": {}}))
    (tmp_path / "metrics/validate.json").write_text(json.dumps({"passed": True}))
    (tmp_path / "metrics/vrq.json").write_text(json.dumps({"cur_min": 0.3}))
    (tmp_path / "data/sids").mkdir(parents=True)
    pd.DataFrame({"item_id": [1, 2, 3], "code_0": [0, 0, 1], "code_1": [0, 0, 0]}).to_parquet(tmp_path / "data/sids/sid_table.parquet")
    got = collect_gate_inputs(Config(), tmp_path)
    assert got.candidate == CANDIDATE and got.baseline is None and got.sid_duplicates == 2
    report = evaluate_gates(got, GATES)
    assert "no 'mca' row in metrics/evaluate.json (systems: onevision, knn)" in gate(report, "baseline.hr@10").reason
    assert not gate(report, "tokenizer.unique_sids").passed
    assert candidate_metrics(got, GATES) == {k: CANDIDATE[k] for k in ("hr@10", "ndcg@10", "sim_orders_per_1k", "latency_p95_ms", "invalid_sid_rate")}


def test_lookup_and_tag_names():
    assert lookup({"a": {"b": 1}, "hr@10": 2}, "a.b") == 1 and lookup({"hr@10": 2}, "hr@10") == 2
    assert lookup({"a": 1}, "a.b") is None and lookup(None, "x") is None
    assert metric_key("baseline.hr@10") == "baseline.hr_at_10"


def test_only_listed_reviewers_may_decide():
    cfg = Config()
    with pytest.raises(ReviewerNotAllowed, match="no reviewers are configured"):
        authorize_reviewer(cfg, "alice")
    cfg.registry.reviewers = ["alice"]
    assert authorize_reviewer(cfg, " alice ") == "alice"
    with pytest.raises(ReviewerNotAllowed, match="'mallory' is not a reviewer"):
        authorize_reviewer(cfg, "mallory")


def test_an_imported_catalog_is_gated_on_logged_orders():
    logged = {k: v for k, v in CANDIDATE.items() if k != "sim_orders_per_1k"} | {"logged_orders_per_1k": 80.0}
    base = {k: v for k, v in MCA.items() if k != "sim_orders_per_1k"} | {"logged_orders_per_1k": 75.0}
    report = evaluate_gates(inputs(candidate=logged, baseline=base), GATES)
    assert report.passed, [(r.name, r.reason) for r in report.failed]
    assert "80" in gate(report, "baseline.orders").reason
    worse = evaluate_gates(inputs(candidate={**logged, "logged_orders_per_1k": 70.0}, baseline=base), GATES)
    assert not gate(worse, "baseline.orders").passed
    assert candidate_metrics(inputs(candidate=logged, baseline=base), GATES)["logged_orders_per_1k"] == 80.0


def test_gate_report_names_the_baseline_and_its_ranker_change():
    """A reviewer reads the candidate against `mca`; the report says which MCA that is (LambdaMART since 2026-12-07)."""
    from onevision.mca import RANKER_CHANGE
    from onevision.promotion.report import markdown_report

    text = markdown_report("onevision", "3", report=evaluate_gates(inputs(), GATES), inputs=inputs(), gates=GATES)
    assert f"Baseline: {RANKER_CHANGE}." in text and "2026-12-07" in text and "mca_pointwise" in text
    other = GATES.model_copy(update={"baseline_system": "knn"})
    assert "Baseline:" not in markdown_report("onevision", "3", report=evaluate_gates(inputs(), other), inputs=inputs(), gates=other)
