"""Promotion gates: what a candidate must pass before a reviewer may approve it.

Every gate compares one measured value with a threshold from
``registry.gates`` in params.yaml and yields a :class:`GateResult`. The gates
are a pure function of :class:`GateInputs` (the project's metrics files and
the champion's metrics, read from its registry tags by the caller), so they
are tested without MLflow. A missing input is a failed gate whose reason
names the missing file or key, never an exception.

Tolerances are relative: a gate against a reference value ``r`` passes when
``candidate >= r * (1 - tolerance)``.

| gate | passes when |
|---|---|
| ``baseline.<metric>`` | quality metric not below the baseline (MCA) by more than ``quality_tolerance`` |
| ``baseline.orders`` | orders (simulated, or logged orders shown for an imported catalog) not below the baseline by more than ``orders_tolerance`` |
| ``champion.<metric>``, ``champion.orders`` | no regression beyond ``champion_tolerance`` against the current champion (passes when there is none) |
| ``invalid_sid_rate`` | exactly 0 |
| ``latency_p95`` | within ``latency_budget_ms`` |
| ``tokenizer.unique_sids`` | no two items share a SID in the SID table |
| ``tokenizer.codebook_usage`` | the least-used VRQ level uses at least ``min_codebook_usage`` of its codes |
| ``data_validation`` | metrics/validate.json says the data passed |
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from onevision import paths
from onevision.config import Config, GatesConfig
from onevision.evaluation.metrics import resolve_metric
from onevision.serving.bundle import SID_TABLE

ORDERS = "orders"


@dataclass
class GateResult:
    name: str
    passed: bool
    value: float | None  # the candidate's measured value
    threshold: float | None  # the bound it was held to
    reason: str  # one line a reviewer can read


@dataclass
class GateReport:
    results: list[GateResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "gates": [asdict(r) for r in self.results]}

    def values(self) -> dict[str, Any]:
        """Compact gate -> (value, passed) map for audit records."""
        return {r.name: {"value": r.value, "passed": r.passed} for r in self.results}


@dataclass
class GateInputs:
    """What the gates read. ``None`` means absent; ``missing`` says why (shown as the gate's reason)."""

    candidate: dict[str, Any] | None = None  # metrics/evaluate.json row of the candidate system
    baseline: dict[str, Any] | None = None  # metrics/evaluate.json row of the baseline system (MCA)
    champion: dict[str, Any] | None = None  # the champion's metrics (from its version tags)
    champion_version: str | None = None  # None: no champion yet
    generative: dict[str, Any] | None = None  # metrics/<serving.stage>.json (its VAL probe)
    tokenizer: dict[str, Any] | None = None  # metrics/vrq.json
    sid_duplicates: int | None = None  # items sharing a SID in the SID table
    validation: dict[str, Any] | None = None  # metrics/validate.json
    missing: dict[str, str] = field(default_factory=dict)


def lookup(metrics: dict[str, Any] | None, key: str) -> Any:
    """``metrics[key]``, else the dotted path ``a.b.c`` through nested dicts; None when absent."""
    if metrics is None:
        return None
    if key in metrics:
        return metrics[key]
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def at_least(name: str, value: Any, *, reference: Any, tolerance: float, what: str, missing: str, ref_missing: str) -> GateResult:
    """Pass when value >= reference * (1 - tolerance) (reference >= 0; mirrored for negatives)."""
    v, r = _number(value), _number(reference)
    if v is None:
        return GateResult(name, False, None, None, missing)
    if r is None:
        return GateResult(name, False, v, None, ref_missing)
    threshold = r * (1 - tolerance) if r >= 0 else r * (1 + tolerance)
    ok = v >= threshold
    return GateResult(name, ok, v, threshold, f"{_fmt(v)} {'>=' if ok else '<'} {_fmt(threshold)} ({what} {_fmt(r)}, tolerance {tolerance:.1%})")


def resolved_gates(gates: GatesConfig, inputs: GateInputs) -> GatesConfig:
    """``gates`` with ``orders_metric: orders`` named for what the candidate's evaluation measured:
    simulated orders (demo shop) or the replay of logged orders (an imported catalog)."""

    return gates.model_copy(update={"orders_metric": resolve_metric(gates.orders_metric, inputs.candidate or {})})


def candidate_metric(inputs: GateInputs, key: str) -> Any:
    return lookup(inputs.candidate, key)


def evaluate_gates(inputs: GateInputs, gates: GatesConfig) -> GateReport:
    """Every gate, in a fixed order (the report's rows)."""
    gates = resolved_gates(gates, inputs)
    results: list[GateResult] = []
    cand_src = f"metrics/evaluate.json['{gates.candidate_system}']"
    base_src = f"metrics/evaluate.json['{gates.baseline_system}']"

    def cand_missing(key: str) -> str:
        return inputs.missing.get("candidate") or f"'{key}' not in {cand_src}"

    compared = [*gates.quality_metrics, gates.orders_metric]
    for key in compared:
        label = ORDERS if key == gates.orders_metric else key
        tol = gates.orders_tolerance if key == gates.orders_metric else gates.quality_tolerance
        results.append(at_least(
            f"baseline.{label}", candidate_metric(inputs, key), reference=lookup(inputs.baseline, key), tolerance=tol, what=gates.baseline_system,
            missing=cand_missing(key), ref_missing=inputs.missing.get("baseline") or f"'{key}' not in {base_src}",
        ))
    for key in compared:
        label = ORDERS if key == gates.orders_metric else key
        name = f"champion.{label}"
        if inputs.champion_version is None:
            v = _number(candidate_metric(inputs, key))
            results.append(GateResult(name, True, v, None, "no champion yet: nothing to regress against"))
            continue
        results.append(at_least(
            name, candidate_metric(inputs, key), reference=lookup(inputs.champion, key), tolerance=gates.champion_tolerance,
            what=f"champion v{inputs.champion_version}", missing=cand_missing(key),
            ref_missing=f"champion v{inputs.champion_version} has no '{key}' in its version tags",
        ))

    # Invalid SIDs: evaluate.json's row, else the generative stage's VAL probe.
    key = gates.invalid_sid_metric
    raw, source = candidate_metric(inputs, key), cand_src
    if raw is None:
        raw, source = lookup(inputs.generative, f"probe.{key}"), "the generative stage's probe"
    rate = _number(raw)
    if rate is None:
        results.append(GateResult("invalid_sid_rate", False, None, 0.0, f"'{key}' found in neither {cand_src} nor the generative stage's metrics"))
    else:
        results.append(GateResult("invalid_sid_rate", rate == 0.0, rate, 0.0, f"{_fmt(rate)} {'==' if rate == 0 else '!='} 0 (from {source})"))

    latency = _number(candidate_metric(inputs, gates.latency_metric))
    if latency is None:
        results.append(GateResult("latency_p95", False, None, gates.latency_budget_ms, cand_missing(gates.latency_metric)))
    else:
        ok = latency <= gates.latency_budget_ms
        results.append(GateResult("latency_p95", ok, latency, gates.latency_budget_ms,
                                  f"{_fmt(latency)} ms {'<=' if ok else '>'} budget {_fmt(gates.latency_budget_ms)} ms"))

    if inputs.sid_duplicates is None:
        results.append(GateResult("tokenizer.unique_sids", False, None, 0.0, inputs.missing.get("sid_table", "SID table not found")))
    else:
        ok = inputs.sid_duplicates == 0
        results.append(GateResult("tokenizer.unique_sids", ok, float(inputs.sid_duplicates), 0.0,
                                  "every item has its own SID" if ok else f"{inputs.sid_duplicates} items share a SID with another item"))

    usage_key = gates.codebook_usage_metric
    usage = _number(lookup(inputs.tokenizer, usage_key))
    if usage is None:
        reason = inputs.missing.get("tokenizer") or f"'{usage_key}' not in metrics/vrq.json (keys: {', '.join(sorted(inputs.tokenizer or {})[:12])})"
        results.append(GateResult("tokenizer.codebook_usage", False, None, gates.min_codebook_usage, reason))
    else:
        ok = usage >= gates.min_codebook_usage
        results.append(GateResult("tokenizer.codebook_usage", ok, usage, gates.min_codebook_usage,
                                  f"{_fmt(usage)} {'>=' if ok else '<'} {_fmt(gates.min_codebook_usage)} ({usage_key} in metrics/vrq.json)"))

    flag = lookup(inputs.validation, gates.validation_passed_key)
    if inputs.validation is None:
        results.append(GateResult("data_validation", False, None, 1.0, inputs.missing.get("validation", "metrics/validate.json not found")))
    elif not isinstance(flag, bool):
        results.append(GateResult("data_validation", False, None, 1.0, f"metrics/validate.json has no boolean '{gates.validation_passed_key}'"))
    else:
        results.append(GateResult("data_validation", flag, float(flag), 1.0, "data validation passed" if flag else "data validation failed (reports/validate.md)"))
    return GateReport(results)


# --------------------------------------------------------------------------- inputs from a project root


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def sid_duplicates(sid_table: Path) -> int | None:
    """Items whose full SID another item also has (0 after disambiguation); None when the table is absent."""
    if not sid_table.exists():
        return None

    table = pd.read_parquet(sid_table)
    codes = [c for c in table.columns if c != "item_id"]
    return int(table.duplicated(codes, keep=False).sum())


def collect_gate_inputs(cfg: Config, root: Path, champion: dict[str, Any] | None = None, champion_version: str | None = None) -> GateInputs:
    """Read the metrics files of project ``root``; the champion's metrics come from the registry."""

    gates = cfg.registry.gates
    root = Path(root)
    inputs = GateInputs(champion=champion, champion_version=champion_version)
    evaluation = _read_json(root / paths.metrics_file("evaluate"))
    if evaluation is None:
        inputs.missing["candidate"] = inputs.missing["baseline"] = "metrics/evaluate.json not found: run stage evaluate"
    else:
        inputs.candidate, inputs.baseline = evaluation.get(gates.candidate_system), evaluation.get(gates.baseline_system)
        for role, system in (("candidate", gates.candidate_system), ("baseline", gates.baseline_system)):
            if getattr(inputs, role) is None:
                inputs.missing[role] = f"no '{system}' row in metrics/evaluate.json (systems: {', '.join(evaluation)})"
    inputs.generative = _read_json(root / paths.metrics_file(cfg.serving.stage))
    inputs.tokenizer = _read_json(root / paths.metrics_file("vrq"))
    if inputs.tokenizer is None:
        inputs.missing["tokenizer"] = "metrics/vrq.json not found: run stage vrq"
    inputs.sid_duplicates = sid_duplicates(root / SID_TABLE)
    if inputs.sid_duplicates is None:
        inputs.missing["sid_table"] = f"{SID_TABLE} not found: run stage vrq"
    inputs.validation = _read_json(root / paths.metrics_file("validate"))
    if inputs.validation is None:
        inputs.missing["validation"] = "metrics/validate.json not found: run stage validate"
    return inputs


def candidate_metrics(inputs: GateInputs, gates: GatesConfig) -> dict[str, float]:
    """The candidate's gated metrics, recorded on its version so a later candidate can be compared with it."""
    gates = resolved_gates(gates, inputs)
    keys = [*gates.quality_metrics, gates.orders_metric, gates.latency_metric, gates.invalid_sid_metric]
    out = {}
    for key in keys:
        value = _number(candidate_metric(inputs, key))
        if value is None and key == gates.invalid_sid_metric:
            value = _number(lookup(inputs.generative, f"probe.{key}"))
        if value is not None:
            out[key] = value
    return out
