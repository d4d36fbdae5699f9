"""The Evidently report of one drift run and the verdict drawn from it.

Every check compares the reference and current values of its columns with an
effect size, so the verdict does not depend on how large the window is:

* numerical columns: Wasserstein distance divided by the reference's standard
  deviation (Evidently ``wasserstein``); 0.1 means "the distribution moved by
  a tenth of its usual spread";
* categorical columns: Jensen-Shannon distance (Evidently ``jensenshannon``,
  0 = same mix, 1 = disjoint). Its sampling noise grows with the number of
  categories, so categories rarer than the window can resolve are pooled into
  ``(other)`` until that noise stays below half the threshold
  (:func:`pool_rare_categories`).

Small windows are noisy: a numerical score is only an alarm above the noise
floor ``3.5 * sqrt(1/n + 1/m)`` too (n, m: current and reference rows; the
99.9th percentile of the no-drift score is at most ~3.5 times that scale for
normal, lognormal, bimodal and uniform data), so the effective threshold is
``max(configured, floor)``: the configured one from ~2,000 current rows up.

Evidently's own ``EmbeddingsDrift`` metric always fits a t-SNE of up to 5,000
points for its plot (~30 s on two cores), so the embedding check runs
``ValueDrift`` on principal components of the embedding instead; the verdict
is the largest component's score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from onevision.config import DriftConfig
from onevision.monitoring.features import IMAGE_STATS, OK, QUALITY_ISSUES

OTHER = "(other)"
NOISE_FLOOR = 3.5  # x sqrt(1/n + 1/m): no-drift Wasserstein/std stays below this (p99.9, see module doc)
NUMERICAL_METHOD = "wasserstein"
CATEGORICAL_METHOD = "jensenshannon"


@dataclass(frozen=True)
class CheckSpec:
    """One drift check: its columns, their kind, the config field of its threshold and what an alarm means."""

    name: str
    columns: tuple[str, ...]
    kind: str  # "numerical" | "categorical"
    threshold_field: str
    meaning: str


def check_specs(pc_columns: list[str]) -> list[CheckSpec]:
    return [
        CheckSpec("image_embedding", tuple(pc_columns), "numerical", "embedding_threshold",
                  "query photos look different to the encoder (new kinds of products, camera or app change, new shooting habits)"),
        CheckSpec("image_stats", IMAGE_STATS, "numerical", "image_stats_threshold",
                  "exposure, contrast or focus of the query photos changed (lighting, blur, compression)"),
        CheckSpec("category", ("category",), "categorical", "categorical_threshold",
                  "shoppers search a different category mix (season, campaign, new catalog section)"),
        CheckSpec("brand", ("brand",), "categorical", "categorical_threshold",
                  "traffic goes to different brands, or to brands the model never saw (a launch)"),
        CheckSpec("price", ("price",), "numerical", "numerical_threshold",
                  "searched products sit in a different price range (premium launch, sale, repricing)"),
        CheckSpec("region", ("region",), "categorical", "categorical_threshold",
                  "the user base changed (new market, anonymous traffic, a partner app)"),
        CheckSpec("generated_sid", ("sid_prefix",), "categorical", "sid_threshold",
                  "the model sends traffic to different parts of the catalog (SID prefixes of its top results)"),
    ]


def pool_rare_categories(reference: pd.Series, current: pd.Series, threshold: float) -> tuple[pd.Series, pd.Series, int]:
    """Pool rare reference categories into ``(other)`` so JS sampling noise stays below ``threshold / 2``.

    Under no drift, JS divergence (nats) ≈ (K - 1) / 8 · (1/n + 1/m) for K
    categories and window sizes n, m; the distance is its square root. Keeping
    the K - 1 most frequent reference categories (plus ``(other)``) with
    K - 1 ≤ 2 · threshold² / (1/n + 1/m) holds the expected null distance at
    ≤ threshold / 2. Returns the pooled series and how many categories were pooled.
    """
    ref = reference.astype(object).where(reference.notna(), None)
    cur = current.astype(object).where(current.notna(), None)
    n, m = int(cur.notna().sum()), int(ref.notna().sum())
    if n == 0 or m == 0:
        return ref, cur, 0
    k_max = max(2, int(2 * threshold**2 / (1.0 / n + 1.0 / m)) + 1)
    counts = ref.value_counts()
    categories = set(counts.index) | set(cur.dropna().unique())
    if len(categories) <= k_max:
        return ref, cur, 0
    keep = set(counts.index[: k_max - 1])

    def pool(s: pd.Series) -> pd.Series:
        return s.where(s.isna() | s.isin(keep), OTHER)

    return pool(ref), pool(cur), len(categories) - len(keep)


@dataclass
class ColumnScore:
    column: str
    method: str
    score: float | None
    threshold: float
    drifted: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "score": self.score, "threshold": self.threshold, "drifted": self.drifted}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class CheckResult:
    """The verdict of one check: ``status`` is ``ok``, ``drift`` or ``skipped: <why>``."""

    name: str
    status: str
    score: float | None
    threshold: float
    meaning: str
    columns: list[ColumnScore] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def alarm(self) -> bool:
        return self.status == "drift"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "score": self.score,
            "threshold": self.threshold,
            "meaning": self.meaning,
            "columns": {c.column: c.to_dict() for c in self.columns},
            **({"details": self.details} if self.details else {}),
        }


def _usable(series: pd.Series) -> bool:
    return int(series.notna().sum()) >= 2


def build_report(reference: pd.DataFrame, current: pd.DataFrame, cfg: DriftConfig, specs: list[CheckSpec], skipped: dict[str, str]):
    """Run the Evidently report; returns ``(snapshot, check results)``.

    ``skipped`` maps check name -> reason for checks that cannot run (e.g. no SID source).
    """
    # lazy: Evidently only when the HTML report is built; the JSON verdict needs none of it
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MissingValueCount, OutListValueCount, UniqueValueCount, ValueDrift

    reference, current = reference.copy(), current.copy()
    metrics: list = []
    planned: list[tuple[CheckSpec, str, str, float, str]] = []  # spec, column, method, threshold, note
    numerical, categorical = [], []
    unusable: dict[str, dict[str, str]] = {}
    # Evidently shows its blocks in this order: the embedding's many components last, after the few columns
    # (photo statistics, category, brand, ...) whose drift a person reads at a glance.
    for spec in sorted(specs, key=lambda s: s.name == "image_embedding"):
        if spec.name in skipped:
            continue
        configured = float(getattr(cfg, spec.threshold_field))
        method = NUMERICAL_METHOD if spec.kind == "numerical" else CATEGORICAL_METHOD
        for col in spec.columns:
            if not (_usable(reference[col]) and _usable(current[col])):
                unusable.setdefault(spec.name, {})[col] = "no data in one of the windows"
                continue
            threshold, note = configured, ""
            n, m = int(current[col].notna().sum()), int(reference[col].notna().sum())
            if spec.kind == "numerical":
                floor = NOISE_FLOOR * float(np.sqrt(1.0 / n + 1.0 / m))
                if floor > threshold:
                    threshold, note = round(floor, 4), f"threshold raised to the noise floor of {n} vs {m} rows"
                reference[col] = reference[col].astype(np.float64)
                current[col] = current[col].astype(np.float64)
                numerical.append(col)
            else:
                reference[col], current[col], pooled = pool_rare_categories(reference[col], current[col], threshold)
                note = f"{pooled} rare categories pooled into {OTHER}" if pooled else ""
                categorical.append(col)
            metrics.append(ValueDrift(column=col, method=method, threshold=threshold))
            planned.append((spec, col, method, threshold, note))
    categorical.append("quality_issue")
    metrics += [OutListValueCount(column="quality_issue", values=[OK]), UniqueValueCount(column="quality_issue")]
    for col in ("category", "price", "brand", "region"):
        metrics.append(MissingValueCount(column=col))
        if col not in numerical + categorical:
            (numerical if col == "price" else categorical).append(col)

    columns = list(dict.fromkeys(numerical + categorical))
    definition = DataDefinition(numerical_columns=[c for c in columns if c in numerical], categorical_columns=[c for c in columns if c in categorical])
    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    values = _metric_values(snapshot)

    results: list[CheckResult] = []
    for spec in specs:
        threshold = float(getattr(cfg, spec.threshold_field))
        if spec.name in skipped:
            results.append(CheckResult(spec.name, skipped[spec.name], None, threshold, spec.meaning))
            continue
        scores = []
        for p_spec, col, method, thr, note in planned:
            if p_spec.name != spec.name:
                continue
            score = float(values[("ValueDrift", col)])
            scores.append(ColumnScore(col, method, score, thr, bool(score >= thr), note))
        if not scores:
            results.append(CheckResult(spec.name, "skipped: no data in one of the windows", None, threshold, spec.meaning))
            continue
        top = max(s.score for s in scores if s.score is not None)
        status = "drift" if any(s.drifted for s in scores) else "ok"
        details: dict[str, Any] = {"configured_threshold": threshold}
        if spec.name in unusable:
            details["unusable_columns"] = unusable[spec.name]
        effective = max(s.threshold for s in scores)
        results.append(CheckResult(spec.name, status, top, effective, spec.meaning, scores, details))

    bad = values[("OutListValueCount", "quality_issue")]
    counts = values[("UniqueValueCount", "quality_issue")]["counts"]
    issues = {k: int(v) for k, v in sorted(counts.items()) if k != OK and v}
    missing = {col: values[("MissingValueCount", col)]["share"] for col in ("category", "price", "brand", "region")}
    share = float(bad["share"])
    results.append(
        CheckResult(
            "data_quality",
            "drift" if share > cfg.max_bad_fraction else "ok",
            share,
            cfg.max_bad_fraction,
            "queries arrive broken: missing or undecodable photos, unknown users or products, prices out of range",
            details={"bad_rows": int(bad["count"]), "issues": issues, "missing_share": missing, "known_issues": list(QUALITY_ISSUES)},
        )
    )
    return snapshot, results


def _metric_values(snapshot) -> dict[tuple[str, str], Any]:
    """(metric type, column) -> current value, from the snapshot's dict."""
    out: dict[tuple[str, str], Any] = {}
    for entry in snapshot.dict()["metrics"]:
        config = entry.get("config", {})
        kind = str(config.get("type", "")).rsplit(":", 1)[-1]
        column = config.get("column")
        value = entry.get("value")
        if kind == "UniqueValueCount" and isinstance(value, dict):
            value = {"counts": value.get("counts", value)}
        out[(kind, column)] = value
    return out
