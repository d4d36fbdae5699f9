"""The offline evaluation harness: every system on the same TEST queries, side by side.

For each :class:`~onevision.retrieval.Retriever` it measures

* relevance against the photographed product (exact item): HR@K, Recall@K,
  NDCG@K, MRR and same-category precision@K; and against what the shopper
  clicked / ordered in the logged session (click and order test sets:
  queries with at least one click / order): HR@K, Recall@K, MRR@K;
* personalisation: expected clicks and orders per 1,000 queries and the
  conversion (orders per click) when the top ``shown`` items are shown to the
  :class:`~onevision.data.simulator.UserSimulator`, with bootstrap intervals;
* cost (:mod:`onevision.evaluation.cost`): batch-1 latency percentiles,
  batch throughput, peak memory;
* for systems that expose ``stage_candidates(images, user_ids)`` (MCA): the
  exact-item hit rate after each cut and the loss each cut causes;
* for systems that expose ``evaluation_metrics() -> dict``: whatever they
  counted during the quality pass (e.g. OneVision's invalid-SID rate), merged
  into their row; the harness resets nothing, so count per pass if needed.

No system is special-cased: they differ only in what they return. Metric
values come from :mod:`onevision.evaluation.metrics`, the same functions the
tests check by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevision import paths
from onevision.config import Config, EvaluateConfig
from onevision.data.simulator import UserSimulator
from onevision.data.split import load_split
from onevision.data.tables import read_tables
from onevision.encoder.api import decode_image_column
from onevision.evaluation import cost
from onevision.evaluation.metrics import (
    bootstrap_ci,
    category_lookup,
    category_precision_at_k,
    hit_rate_at_k,
    hits_at_k,
    json_safe,
    ndcg_at_k,
    pad_item_lists,
    paired_delta_ci,
    ratio_of_sums,
    recall_at_k,
    reciprocal_rank,
)
from onevision.retrieval import Retriever

log = logging.getLogger(__name__)


@dataclass
class TestSet:
    """The test queries and everything needed to score a ranked list for them."""

    query_ids: np.ndarray  # (Q,) int64
    user_ids: np.ndarray  # (Q,) int64
    target_ids: np.ndarray  # (Q,) int64: the photographed product
    images: np.ndarray  # (Q, H, W[, 3]) uint8
    clicked: np.ndarray  # (Q, R) int64 item ids clicked in the logged session, -1 padded
    ordered: np.ndarray  # (Q, R') int64
    category_of: Callable[[np.ndarray], np.ndarray]
    simulator: Any | None = None  # UserSimulator; None for imported catalogs without user_tastes
    n_items: int = 0
    target_categories: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.target_categories = self.category_of(self.target_ids)

    def __len__(self) -> int:
        return len(self.query_ids)


def _interaction_lists(query_ids: np.ndarray, interactions: pd.DataFrame, action: str) -> np.ndarray:
    acts = interactions.loc[interactions["action"] == action, ["query_id", "item_id"]].drop_duplicates()
    grouped = acts.groupby("query_id")["item_id"].apply(list)
    return pad_item_lists([grouped.get(q, []) for q in query_ids])


def load_test_set(cfg: Config, root: Path, split: str = "test") -> TestSet:
    """Queries of ``split`` with their images, logged clicks/orders and the simulator (seeded sample if capped)."""

    tables = read_tables(root / paths.VALIDATED, ("items", "queries", "interactions", "user_tastes"))
    queries = load_split(root / paths.SPLITS, tables["queries"], split).sort_values("query_id", kind="mergesort")
    cap = cfg.evaluate.max_queries
    if cap is not None and len(queries) > cap:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xE7A1]))
        queries = queries.iloc[np.sort(rng.choice(len(queries), cap, replace=False))]
    queries = queries.reset_index(drop=True)
    query_ids = queries["query_id"].to_numpy(np.int64)
    acts = tables["interactions"][tables["interactions"]["query_id"].isin(query_ids)]
    items = tables["items"]
    simulator = None
    if "user_tastes" in tables:
        simulator = UserSimulator.from_tables(items, tables["user_tastes"], seed=cfg.seed)
    return TestSet(
        query_ids=query_ids,
        user_ids=queries["user_id"].to_numpy(np.int64),
        target_ids=queries["item_id"].to_numpy(np.int64),
        images=decode_image_column(queries, cfg.data.import_dir, cfg.data.image_channels),
        clicked=_interaction_lists(query_ids, acts, "click"),
        ordered=_interaction_lists(query_ids, acts, "order"),
        category_of=category_lookup(items["item_id"].to_numpy(), items["category"].to_numpy()),
        simulator=simulator,
        n_items=len(items),
    )


@dataclass
class SystemRun:
    """One system's evaluation: flat metrics for metrics/evaluate.json, per-query arrays for paired comparisons."""

    name: str
    metrics: dict[str, Any]
    per_query: dict[str, np.ndarray]
    ranked: np.ndarray


def _ci(prefix: str, values, *, out: dict[str, Any], ecfg: EvaluateConfig, seed: int, statistic=None, scale: float = 1.0) -> None:
    lo, hi = bootstrap_ci(values, statistic, n_resamples=ecfg.bootstrap, level=ecfg.ci_level, seed=seed)
    out[f"{prefix}_ci_lo"], out[f"{prefix}_ci_hi"] = lo * scale, hi * scale


def relevance_metrics(ranked: np.ndarray, test: TestSet, ks: list[int]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Exact-item and same-category metrics at each K (per-query arrays keyed like the metrics)."""
    target = test.target_ids[:, None]
    per_query: dict[str, np.ndarray] = {}
    for k in ks:
        per_query[f"hr@{k}"] = hit_rate_at_k(ranked, target, k)
        per_query[f"recall@{k}"] = recall_at_k(ranked, target, k)
        per_query[f"ndcg@{k}"] = ndcg_at_k(ranked, target, k)
        per_query[f"cat_precision@{k}"] = category_precision_at_k(ranked, test.target_categories, test.category_of, k)
    per_query["mrr"] = reciprocal_rank(ranked, target)
    return {name: float(v.mean()) for name, v in per_query.items()}, per_query


def interaction_metrics(ranked: np.ndarray, relevant: np.ndarray, ks: list[int], prefix: str) -> dict[str, float]:
    """HR@K, Recall@K and MRR@K on the queries with at least one relevant (clicked / ordered) item."""
    has = (relevant >= 0).any(axis=1)
    out: dict[str, float] = {f"{prefix}_queries": int(has.sum())}
    for k in ks:
        if has.any():
            out[f"{prefix}_hr@{k}"] = float(hit_rate_at_k(ranked[has], relevant[has], k).mean())
            out[f"{prefix}_recall@{k}"] = float(recall_at_k(ranked[has], relevant[has], k).mean())
            out[f"{prefix}_mrr@{k}"] = float(reciprocal_rank(ranked[has], relevant[has], k).mean())
        else:
            out[f"{prefix}_hr@{k}"] = out[f"{prefix}_recall@{k}"] = out[f"{prefix}_mrr@{k}"] = float("nan")
    return out


def simulated_metrics(ranked: np.ndarray, test: TestSet, shown: int, ecfg: EvaluateConfig, seed: int
                      ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Expected clicks / orders per 1,000 queries and conversion when the top ``shown`` items are shown."""
    if test.simulator is None:
        return {}, {}
    score = test.simulator.score(test.user_ids, test.target_ids, ranked[:, :shown])
    clicks, orders = score["expected_clicks"], score["expected_orders"]
    out = {
        "sim_shown": shown,
        "sim_clicks_per_1k": 1e3 * float(clicks.mean()),
        "sim_orders_per_1k": 1e3 * float(orders.mean()),
        "sim_conversion": ratio_of_sums(orders, clicks),
        "sim_exact_click_rate": float(score["exact_click_rate"]),
    }
    _ci("sim_clicks_per_1k", clicks, out=out, ecfg=ecfg, seed=seed, scale=1e3)
    _ci("sim_orders_per_1k", orders, out=out, ecfg=ecfg, seed=seed, scale=1e3)
    _ci("sim_conversion", (orders, clicks), out=out, ecfg=ecfg, seed=seed, statistic=ratio_of_sums)
    return out, {"sim_clicks": clicks, "sim_orders": orders}


def logged_metrics(ranked: np.ndarray, test: TestSet, shown: int, ecfg: EvaluateConfig, seed: int
                   ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Replay of the search log: logged clicks / orders per 1,000 queries whose item is in the top ``shown``.

    What the system's result page would have contained of what shoppers really clicked and ordered. It
    needs no simulator, so it is the orders measurement of an imported catalog; it favours lists like
    the logging system's (shoppers only acted on what they were shown), so read it as a lower bound
    for a system that surfaces items the log never showed.
    """
    out: dict[str, float] = {}
    per_query: dict[str, np.ndarray] = {}
    for name, logged in (("clicks", test.clicked), ("orders", test.ordered)):
        if logged.size == 0 or not (logged >= 0).any():
            continue
        hits = hits_at_k(ranked, logged, min(shown, ranked.shape[1]))
        out[f"logged_{name}_per_1k"] = 1e3 * float(hits.mean())
        _ci(f"logged_{name}_per_1k", hits, out=out, ecfg=ecfg, seed=seed, scale=1e3)
        per_query[f"logged_{name}"] = hits
    if out:
        out["logged_shown"] = shown
    return out, per_query


def stage_breakdown(system: Retriever, test: TestSet, final: dict[str, float], batch_size: int) -> dict[str, Any] | None:
    """Exact-item hit rate after each cut of a staged system, and the loss each cut causes."""
    stage_fn = getattr(system, "stage_candidates", None)
    if stage_fn is None:
        return None
    hits: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    for start in range(0, len(test), batch_size):
        batch = slice(start, start + batch_size)
        for stage, ids in stage_fn(test.images[batch], test.user_ids[batch]).items():
            hits.setdefault(stage, []).append(hit_rate_at_k(ids, test.target_ids[batch, None], ids.shape[1]))
            sizes[stage] = ids.shape[1]
    out: dict[str, Any] = {}
    previous = 1.0
    for stage, parts in hits.items():
        hit = float(np.concatenate(parts).mean())
        out[stage] = {"size": sizes[stage], "exact_hit": hit, "loss": previous - hit}
        previous = hit
    for k in (10,):  # what the shopper sees first
        if f"hr@{k}" in final:
            out[f"top{k}"] = {"size": k, "exact_hit": final[f"hr@{k}"], "loss": previous - final[f"hr@{k}"]}
    return out


def quality_metrics(ranked: np.ndarray, test: TestSet, ecfg: EvaluateConfig, shown: int, seed: int = 0
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every quality metric of the ranked lists (Q, k) of ``test``'s queries: relevance with CIs, clicks and
    orders logged, simulated (or replayed) orders on a result page of ``shown``; and the per-query values."""
    metrics: dict[str, Any] = {}
    rel, per_query = relevance_metrics(ranked, test, ecfg.ks)
    metrics.update(rel)
    for name in (f"hr@{10 if 10 in ecfg.ks else ecfg.ks[-1]}", "mrr"):
        _ci(name, per_query[name], out=metrics, ecfg=ecfg, seed=seed)
    metrics.update(interaction_metrics(ranked, test.clicked, ecfg.ks, "click"))
    metrics.update(interaction_metrics(ranked, test.ordered, ecfg.ks, "order"))
    sim, sim_per_query = simulated_metrics(ranked, test, shown, ecfg, seed)
    metrics.update(sim)
    per_query.update(sim_per_query)
    logged, logged_per_query = logged_metrics(ranked, test, shown, ecfg, seed)
    metrics.update(logged)
    per_query.update(logged_per_query)
    return metrics, per_query


def evaluate_system(system: Retriever, test: TestSet, *, ecfg: EvaluateConfig, shown: int, seed: int = 0,
                    measure_cost: bool = True) -> SystemRun:
    """All metrics of one system on the test set."""
    k_max = max(max(ecfg.ks), shown)
    log.info("evaluate %s on %d queries", system.name, len(test))
    result, throughput = cost.time_batches(system, test.images, test.user_ids, k_max, ecfg.batch_size)
    ranked = result.item_ids
    metrics: dict[str, Any] = {"n_queries": len(test)}
    own_metrics = getattr(system, "evaluation_metrics", None)
    if callable(own_metrics):  # read right after the quality pass, before timing calls add to any counters
        metrics.update(own_metrics())
    quality, per_query = quality_metrics(ranked, test, ecfg, shown, seed)
    metrics.update(quality)
    rel = {k: v for k, v in quality.items() if k.startswith(("hr@", "recall@", "ndcg@", "mrr"))}
    if measure_cost:
        latency = cost.time_single_queries(system, test.images, user_ids=test.user_ids, k=k_max, n_calls=ecfg.latency_queries, warmup=ecfg.warmup)
        metrics.update({f"latency_{k}": v for k, v in latency.items() if k != "stage_p50_ms" and k != "n_calls"})
        metrics["latency_calls"] = latency["n_calls"]
        metrics["qps"] = throughput["qps"]
        batch = slice(0, min(ecfg.batch_size, len(test)))
        _, mem = cost.peak_memory(lambda: system.retrieve(test.images[batch], test.user_ids[batch], k_max))
        metrics.update(mem)
        metrics.update(cost.traced_peak(lambda: system.retrieve(test.images[batch], test.user_ids[batch], k_max)))
        if throughput["stage_ms_per_query"]:
            metrics["stage_ms_per_query"] = throughput["stage_ms_per_query"]
        if "stage_p50_ms" in latency:
            metrics["stage_latency_p50_ms"] = latency["stage_p50_ms"]
    stages = stage_breakdown(system, test, rel, ecfg.batch_size)
    if stages:
        metrics["stages"] = stages
    return SystemRun(system.name, metrics, per_query, ranked)


# Each alignment stage against the one before it (same queries): does SFT add to pretraining, DPO to SFT?
STAGE_PAIRS = (("onevision_sft", "onevision_pretrain"), ("onevision", "onevision_sft"))


def _paired(run: SystemRun, base: SystemRun, prefix: str, ecfg: EvaluateConfig, seed: int) -> None:
    for key in (k for k in ("hr@10", "ndcg@10", "mrr", "sim_orders", "logged_orders") if k in base.per_query):
        per_1k = key.endswith("_orders")
        scale = 1e3 if per_1k else 1.0
        name = f"{key}_per_1k" if per_1k else key
        delta, lo, hi = paired_delta_ci(run.per_query[key], base.per_query[key], n_resamples=ecfg.bootstrap, level=ecfg.ci_level, seed=seed)
        run.metrics[f"{prefix}_{name}_delta"] = delta * scale
        run.metrics[f"{prefix}_{name}_delta_ci_lo"] = lo * scale
        run.metrics[f"{prefix}_{name}_delta_ci_hi"] = hi * scale


def compare_with_baseline(runs: list[SystemRun], baseline: str, ecfg: EvaluateConfig, seed: int = 0) -> None:
    """Add paired bootstrap deltas (system - baseline, same queries) of HR@10, NDCG@10, MRR and simulated orders, and
    each stage's gain over the stage before it (``stage_gain_*``, :data:`STAGE_PAIRS`)."""
    by_name = {r.name: r for r in runs}
    base = by_name.get(baseline)
    for run in runs:
        if base is not None and run is not base:
            _paired(run, base, f"vs_{baseline}", ecfg, seed)
    for later, earlier in STAGE_PAIRS:
        if later in by_name and earlier in by_name:
            _paired(by_name[later], by_name[earlier], "stage_gain", ecfg, seed)


def evaluate_systems(systems: list[Retriever], test: TestSet, *, ecfg: EvaluateConfig, shown: int, seed: int = 0,
                     measure_cost: bool = True) -> list[SystemRun]:
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique, got {names}")
    runs = [evaluate_system(s, test, ecfg=ecfg, shown=shown, seed=seed, measure_cost=measure_cost) for s in systems]
    compare_with_baseline(runs, ecfg.baseline, ecfg, seed)
    for run in runs:
        run.metrics = json_safe(run.metrics)
    return runs
