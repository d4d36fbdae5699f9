"""Stage ``calibrate_pruning``: sweep the dynamic-pruning knobs, keep the Pareto set, choose an operating point.

The dpo checkpoint decodes the same VAL queries once per point of the grid
(``pruning`` in params.yaml; the no-pruning point is always included). Per point:

* quality, with the evaluation's own functions (onevision.evaluation.harness):
  exact-item HR@10 / NDCG@10 / MRR and simulated clicks / orders per 1,000
  queries (the user simulator scores the top ``shown`` items), plus the
  invalid-SID rate (must stay 0);
* decoding latency per query, after warm-up, on one thread: batch 1
  (p50 / p95 over ``latency_queries`` calls, interleaved call by call with the
  unpruned search on the same queries; the point's latency is the unpruned
  latency divided by that paired speed-up, so load drifting during the sweep
  does not pick the winner) and batched (time per query over the whole VAL
  sample in batches of ``batch_size``). The query images are encoded once,
  outside the timings: pruning changes decoding, not the image encoder.

Each point's *relative loss* on a guarded metric is ``1 - point / unpruned``,
both on the same queries; its *quality* for the Pareto set is the worst retained
share over the guarded metrics (``min point / unpruned``). The Pareto set is
that of faiss's ``OperatingPoints`` (no other point is both better and faster);
the chosen point is the fastest whose loss on every guarded metric is at most
``max_relative_loss`` (the unpruned point qualifies trivially, so there is
always one); with ``loss_bound`` the loss that must stay within it is the upper
end of its paired-bootstrap 95 % interval over the VAL queries, and points
within ``latency_tolerance`` of the fastest eligible one tie on speed (the one
that retains most quality wins), so reruns, whose batch-1 timings move by a
few per cent, choose the same point. Knobs that change nothing in this model's
search (:func:`effective_config`) are dropped from the grid before it runs.
It is then checked head to head against the unpruned model on
TEST queries: quality on the same queries, and batch-1 latency measured with
interleaved calls so both see the same machine load.

Writes ``models/pruning/pruning.json`` (the chosen config, what the bundle and
the ``onevision_pruned`` evaluation row decode with), ``metrics/pruning.json``
(every point, the Pareto set, the chosen point, speed-up and loss),
``plots/pruning_pareto.png`` and ``reports/pruning.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from onevision import atomic, paths
from onevision.config import Config, PruningSweepConfig
from onevision.evaluation.cost import limit_threads
from onevision.evaluation.harness import load_test_set, logged_metrics, relevance_metrics, simulated_metrics
from onevision.evaluation.metrics import bootstrap_ci, json_safe, latency_summary, pareto_front, resolve_metric
from onevision.generative.calibrate_report import markdown_report, plot_pareto
from onevision.generative.decode import beam_search
from onevision.generative.pruning import NO_PRUNING, PruningConfig, save_pruning
from onevision.generative.retriever import OneVisionRetriever

log = logging.getLogger(__name__)

METRICS_FILE = paths.METRICS / "pruning.json"
PLOT = paths.PLOTS / "pruning_pareto.png"
REPORT = paths.REPORTS / "pruning.md"
QUALITY_KEYS = ("hr@10", "ndcg@10", "mrr", "sim_clicks_per_1k", "sim_orders_per_1k", "logged_clicks_per_1k", "logged_orders_per_1k")


# --------------------------------------------------------------------------- the grid and the choice


def effective_config(config: PruningConfig, model=None) -> PruningConfig:
    """``config`` without the knobs that change nothing in ``model``'s search (None: every knob counts). A geometric
    model expands a kept prefix's items at once and normalises every level over the trie, so early exit and
    renormalisation do nothing there, and its context encoder runs only with the decoder (learned weight > 0), so
    without it the visual tokens do nothing either. Points that decode alike would otherwise tie, and timing noise
    alone would pick among them."""
    if model is None or not model.cfg.geo_levels:
        return config
    decoder = float(model.learned_weight) != 0.0
    out = dataclasses.replace(config, early_exit=False, renormalise=False, **({} if decoder else {"visual_keep_mass": 1.0}))
    return out if out.active else NO_PRUNING


def sweep_grid(sweep: PruningSweepConfig, model=None) -> list[PruningConfig]:
    """Every combination of the swept knob values that decodes differently in ``model``
    (:func:`effective_config`), the no-pruning point first, each config once."""
    points = [NO_PRUNING]
    for mass, margin, widths, exit_ in itertools.product(sweep.visual_keep_mass, sweep.beam_margin, sweep.level_beam_widths, sweep.early_exit):
        point = PruningConfig(
            visual_keep_mass=mass,
            min_visual_tokens=sweep.min_visual_tokens,
            beam_margin=math.inf if margin is None else margin,
            level_beam_widths=tuple(widths) if widths is not None else None,
            early_exit=exit_,
        )
        point = effective_config(point, model)
        if not point.active:
            point = NO_PRUNING  # min_visual_tokens alone changes nothing
        if point not in points:
            points.append(point)
    return points


def relative_loss(value: float | None, reference: float | None) -> float:
    """1 - value / reference (higher is better); 0 when both are 0; inf when a value is missing."""
    if value is None or reference is None or not np.isfinite(value) or not np.isfinite(reference):
        return math.inf
    if reference <= 0:
        return 0.0 if value >= reference else math.inf
    return 1.0 - value / reference


def resolve_guards(guarded: list[str], measured: dict[str, float]) -> tuple[list[str], list[str]]:
    """The configured guards as keys of ``measured`` (``orders``: simulated, else logged orders) and the ones
    this project cannot measure (e.g. simulated orders of an imported catalog): those are dropped, not
    counted as an infinite loss that would forbid every point. HR@10 guards when nothing else is left."""
    keys = list(dict.fromkeys(resolve_metric(m, measured) for m in guarded))
    kept = [m for m in keys if measured.get(m) is not None]
    return kept or ["hr@10"], [m for m in keys if m not in kept]


def score_points(points: list[dict[str, Any]], guarded: list[str], baseline: int = 0, seed: int = 0) -> None:
    """Add ``loss`` (per guarded metric, vs the baseline point), ``retained`` (worst retained share) and, where the points
    carry per-query ``values``, ``loss_hi``: the upper end of the loss's paired-bootstrap 95 % interval (same queries)."""
    base = points[baseline]["quality"]
    for point in points:
        point["loss"] = {m: relative_loss(point["quality"].get(m), base.get(m)) for m in guarded}
        point["retained"] = min(1.0 - loss for loss in point["loss"].values())
        values, base_values = point.get("values"), points[baseline].get("values")
        if values is not None and base_values is not None:
            point["loss_hi"] = {m: loss_upper_bound(values.get(m), base_values.get(m), seed) for m in guarded}


def loss_upper_bound(values: np.ndarray | None, reference: np.ndarray | None, seed: int = 0) -> float:
    """Upper end of the paired-bootstrap 95 % interval of ``1 - mean(values) / mean(reference)`` over the same queries
    (inf when a metric is missing; 0 for identical lists, whose loss no resample can move)."""
    if values is None or reference is None or len(values) != len(reference) or not len(values):
        return math.inf
    if np.array_equal(values, reference):
        return 0.0
    if float(np.mean(reference)) <= 0:
        return relative_loss(float(np.mean(values)), float(np.mean(reference)))
    _, hi = bootstrap_ci((values, reference), lambda v, r: 1.0 - v.mean() / max(r.mean(), 1e-12), seed=seed)
    return hi


def pareto_set(points: list[dict[str, Any]], latency_key: str) -> list[int]:
    """Indices of the points no other point beats on both retained quality and latency, fastest first."""
    return pareto_front([(p["retained"], p["latency"][latency_key]) for p in points])


def choose_point(points: list[dict[str, Any]], max_relative_loss: float, *, latency_key: str, baseline: int = 0,
                 bound: bool = False, latency_tolerance: float = 0.0) -> int:
    """The fastest point whose loss on every guarded metric is within ``max_relative_loss`` (``bound``: the upper end of
    its paired-bootstrap interval, ``loss_hi``; else the point estimate); points within ``latency_tolerance`` of the
    fastest such point's latency tie on speed: the one of them with the most retained quality wins, then the first in
    the grid (the order is fixed, the timings are not). The baseline when none is faster."""
    key = "loss_hi" if bound else "loss"
    eligible = [i for i, p in enumerate(points) if all(loss <= max_relative_loss + 1e-12 for loss in p.get(key, p["loss"]).values())]
    if baseline not in eligible:
        eligible.append(baseline)
    fastest = min(points[i]["latency"][latency_key] for i in eligible)
    tied = [i for i in eligible if points[i]["latency"][latency_key] <= fastest * (1.0 + latency_tolerance)]
    return min(tied, key=lambda i: (-points[i]["retained"], i))


# --------------------------------------------------------------------------- decoding and timing


@dataclass
class DecodeSet:
    """Queries with their model contexts (encoded once) and what scoring them needs."""

    test: Any  # onevision.evaluation.harness.TestSet
    contexts: Any  # Context, Q rows
    singles: list  # Q one-row Contexts, for batch-1 timing without indexing inside the timed call

    def __len__(self) -> int:
        return len(self.test)


def decode_set(retriever, test) -> DecodeSet:
    ctx = retriever.context(test.images, test.user_ids)
    return DecodeSet(test, ctx, [ctx.index(torch.tensor([i])) for i in range(len(test))])


def _decode(retriever, ctx, k: int, pruning: PruningConfig):
    return beam_search(retriever.model, ctx, trie=retriever.trie, beam_width=retriever.beam_width, k=k, pruning=pruning)


def decode_batched(retriever, data: DecodeSet, k: int, pruning: PruningConfig, batch_size: int) -> tuple[np.ndarray, float, dict[str, float]]:
    """Decode every query in batches (one untimed warm-up batch first) -> ranked item ids, invalid-SID rate, timing."""
    Q = len(data)
    batches = [torch.arange(s, min(Q, s + batch_size)) for s in range(0, Q, batch_size)]
    _decode(retriever, data.contexts.index(batches[0]), k, pruning)  # warm-up
    ranked, invalid, n, seconds = [], 0.0, 0, []
    for rows in batches:
        ctx = data.contexts.index(rows)
        t = time.perf_counter()
        res = _decode(retriever, ctx, k, pruning)
        seconds.append(time.perf_counter() - t)
        ranked.append(res.item_ids.cpu().numpy())
        generated = int(torch.isfinite(res.scores).sum())
        invalid += res.invalid_rate * generated
        n += generated
    per_query = np.array(seconds) / np.array([len(b) for b in batches])  # (n_batches,)
    timing = {"batched_ms_per_query": 1e3 * sum(seconds) / Q, "batched_p50_ms": float(np.percentile(per_query, 50) * 1e3),
              "batched_p95_ms": float(np.percentile(per_query, 95) * 1e3), "batch_size": batch_size}
    return np.concatenate(ranked), (invalid / n if n else 0.0), timing


def time_batch1(retriever, data: DecodeSet, *, k: int, configs: list[PruningConfig], n_calls: int, warmup: int) -> list[dict[str, float]]:
    """Batch-1 decoding latency of each config; calls are interleaved (call i of every config back to back)
    so that a change of machine load hits every config alike."""
    Q = len(data)
    for i in range(warmup):
        for config in configs:
            _decode(retriever, data.singles[i % Q], k, config)
    seconds = np.empty((len(configs), n_calls))
    for i in range(n_calls):
        ctx = data.singles[(warmup + i) % Q]
        for c, config in enumerate(configs):
            t = time.perf_counter()
            _decode(retriever, ctx, k, config)
            seconds[c, i] = time.perf_counter() - t
    out = []
    for row in seconds:
        s = latency_summary(row)
        out.append({"batch1_p50_ms": s["p50_ms"], "batch1_p95_ms": s["p95_ms"], "batch1_mean_ms": s["mean_ms"]})
    return out


def quality_of(ranked: np.ndarray, test, cfg: Config, shown: int) -> dict[str, float]:
    """The evaluation's relevance, simulator and search-log replay metrics for one ranked list per query."""
    return quality_and_values(ranked, test, cfg, shown)[0]


def quality_and_values(ranked: np.ndarray, test, cfg: Config, shown: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """:func:`quality_of` and the per-query values of its :data:`QUALITY_KEYS` that are means over queries (keyed like
    the metrics, per-1k metrics scaled alike), for paired bootstrap bounds."""
    rel, rel_q = relevance_metrics(ranked, test, [10])
    sim, sim_q = simulated_metrics(ranked, test, shown, cfg.evaluate, seed=cfg.seed)
    logged, logged_q = logged_metrics(ranked, test, shown, cfg.evaluate, seed=cfg.seed)
    out = {**rel, **{k: v for k, v in {**sim, **logged}.items() if not k.endswith(("_ci_lo", "_ci_hi"))}}
    quality = {key: float(out[key]) for key in out if key in QUALITY_KEYS or key.startswith("sim_")}
    values = {key: rel_q[key] for key in ("hr@10", "ndcg@10", "mrr") if key in rel_q}
    values.update({f"{name}_per_1k": 1e3 * np.asarray(v, np.float64) for name, v in {**sim_q, **logged_q}.items()})
    return quality, values


def measure_point(retriever, data: DecodeSet, *, config: PruningConfig, cfg: Config, k: int, shown: int) -> dict[str, Any]:
    """Quality, invalid-SID rate, batched timing and batch-1 timing of one config.

    Batch-1 calls are interleaved with unpruned calls on the same queries (``paired``): a small
    shared machine's load drifts over a sweep by more than pruning saves, the ratio of the two does not.
    """
    ranked, invalid, timing = decode_batched(retriever, data, k, config, cfg.pruning.batch_size)
    quality, values = quality_and_values(ranked, data.test, cfg, shown)
    latency: dict[str, Any] = dict(timing)
    configs = [config] if config == NO_PRUNING else [NO_PRUNING, config]
    timed = time_batch1(retriever, data, k=k, configs=configs, n_calls=cfg.pruning.latency_queries, warmup=cfg.pruning.warmup)
    latency.update({f"raw_{key}": v for key, v in timed[-1].items()})
    latency["paired_speedup"] = {key: timed[0][key] / timed[-1][key] for key in ("batch1_p50_ms", "batch1_p95_ms")}
    return {"label": config.label(), "config": config.to_dict(), "quality": quality, "values": values,
            "invalid_sid_rate": invalid, "latency": latency}


def adjust_batch1(points: list[dict[str, Any]]) -> None:
    """Each point's batch-1 latency at the unpruned point's load: its measured latency / its paired speed-up."""
    base = points[0]["latency"]
    for point in points:
        lat = point["latency"]
        for key in ("batch1_p50_ms", "batch1_p95_ms"):
            lat[key] = base[f"raw_{key}"] / lat["paired_speedup"][key]
        lat["batch1_mean_ms"] = lat["raw_batch1_mean_ms"]


# --------------------------------------------------------------------------- stage


def decode_k(cfg: Config) -> tuple[int, int]:
    """(k decoded per query, items shown to the simulator): what stage evaluate uses unless pruning.k is set."""
    shown = cfg.evaluate.shown or cfg.data.impressions_per_query
    return cfg.pruning.k or max(max(cfg.evaluate.ks), shown, 10), shown


def sample_queries(cfg: Config, root: Path, split: str, n: int):
    """The evaluation's query set of ``split``, capped to ``n`` queries (seeded)."""

    return load_test_set(cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"max_queries": n})}), root, split)


def head_to_head(retriever, data: DecodeSet, *, chosen: PruningConfig, cfg: Config, k: int, shown: int, guarded: list[str] | None = None) -> dict[str, Any]:
    """Unpruned vs chosen on the same queries: quality, relative loss, interleaved batch-1 and batched speed-up.
    ``guarded``: the metrics whose loss is reported (default: ``pruning.guarded_metrics`` this project measures)."""
    out: dict[str, Any] = {"queries": len(data)}
    rows = {}
    for name, config in (("unpruned", NO_PRUNING), ("chosen", chosen)):
        ranked, invalid, timing = decode_batched(retriever, data, k, config, cfg.pruning.batch_size)
        rows[name] = {"quality": quality_of(ranked, data.test, cfg, shown), "invalid_sid_rate": invalid, "latency": timing}
    b1 = time_batch1(retriever, data, k=k, configs=[NO_PRUNING, chosen], n_calls=cfg.pruning.latency_queries, warmup=cfg.pruning.warmup)
    for name, lat in zip(("unpruned", "chosen"), b1, strict=True):
        rows[name]["latency"].update(lat)
    out.update(rows)
    if guarded is None:
        guarded = resolve_guards(cfg.pruning.guarded_metrics, rows["unpruned"]["quality"])[0]
    out["loss"] = {m: relative_loss(rows["chosen"]["quality"].get(m), rows["unpruned"]["quality"].get(m)) for m in guarded}
    out["speedup"] = speedups(rows["unpruned"]["latency"], rows["chosen"]["latency"])
    return out


def speedups(base: dict[str, float], point: dict[str, float]) -> dict[str, float]:
    keys = ("batch1_p50_ms", "batch1_p95_ms", "batched_ms_per_query")
    return {k: base[k] / point[k] for k in keys if k in base and k in point and point[k] > 0}


def calibrate_pruning(cfg: Config, root: Path) -> dict[str, Any]:
    """Stage ``calibrate_pruning``: returns the summary metrics; writes the files listed in the module docstring."""
    root = Path(root)
    result = sweep(cfg, root)
    chosen, best = PruningConfig.from_dict(result["chosen"]["config"]), result["chosen"]
    save_pruning(chosen, root, {"label": best["label"], "calibrated_on": "val", "val_queries": result["val_queries"], "k": result["k"],
                                "speedup": best["speedup"], "quality_loss": best["loss"], "quality_loss_hi": best.get("loss_hi")})
    atomic.write_json(root / METRICS_FILE, json_safe(result))
    points, key = result["points"], result["select_latency"]
    front = sorted((i for i, p in enumerate(points) if p["pareto"]), key=lambda i: points[i]["latency"][key])  # fastest first, as drawn
    plot_pareto(points, front, chosen_i=points.index(best), latency_key=key, max_loss=result["max_relative_loss"], path=root / PLOT)
    atomic.write_text(root / REPORT, markdown_report(result))
    return json_safe(summary(result))


def sweep(cfg: Config, root: Path, *, test: bool = True) -> dict[str, Any]:
    """Decode the VAL sample at every point of the grid, choose one (module docstring) and, with ``test``, check it head to
    head on TEST; writes nothing (the stage writes; benchmarks/pruning_stability.py reruns this to see the choice hold)."""
    t0 = time.perf_counter()
    root = Path(root)
    sweep_cfg = cfg.pruning
    k, shown = decode_k(cfg)
    retriever = OneVisionRetriever.load(root, "dpo", cfg=cfg)
    grid = sweep_grid(sweep_cfg, retriever.model) if sweep_cfg.enabled else [NO_PRUNING]
    val = decode_set(retriever, sample_queries(cfg, root, "val", sweep_cfg.val_queries))
    log.info("calibrate_pruning: %d points on %d VAL queries, k=%d, beam width %d", len(grid), len(val), k, retriever.beam_width)
    points = []
    with limit_threads(sweep_cfg.threads):
        for config in tqdm(grid, desc="pruning sweep", unit="point"):
            points.append(measure_point(retriever, val, config=config, cfg=cfg, k=k, shown=shown))
        adjust_batch1(points)
        guarded, unmeasured = resolve_guards(sweep_cfg.guarded_metrics, points[0]["quality"])
        if unmeasured:
            log.warning("calibrate_pruning: %s not measured in this project (no simulator or no order log): not guarded; "
                        "guarding %s", ", ".join(unmeasured), ", ".join(guarded))
        score_points(points, guarded, seed=cfg.seed)
        latency_key = sweep_cfg.select_latency
        front = pareto_set(points, latency_key)
        chosen_i = choose_point(points, sweep_cfg.max_relative_loss, latency_key=latency_key, bound=sweep_cfg.loss_bound,
                                latency_tolerance=sweep_cfg.latency_tolerance)
        chosen = PruningConfig.from_dict(points[chosen_i]["config"])
        head = None
        if test and sweep_cfg.test_queries > 0:
            test_set = decode_set(retriever, sample_queries(cfg, root, "test", sweep_cfg.test_queries))
            head = head_to_head(retriever, test_set, chosen=chosen, cfg=cfg, k=k, shown=shown, guarded=guarded)
    for i, point in enumerate(points):
        point.pop("values", None)  # per-query arrays: only the bounds are kept
        point["pareto"] = i in front
        point["speedup"] = speedups(points[0]["latency"], point["latency"])
    best = points[chosen_i]
    bad = [p["label"] for p in points if p["invalid_sid_rate"] > 0]
    if bad:
        raise RuntimeError(f"pruning produced invalid SIDs at {bad}: a bug, the trie guarantee must hold")
    _log_choice(points, chosen_i, front=front, sweep=sweep_cfg, latency_key=latency_key, test=head)
    return {
        "k": k, "shown": shown, "val_queries": len(val), "beam_width": retriever.beam_width, "enabled": sweep_cfg.enabled,
        "guarded_metrics": guarded, "unmeasured_guards": unmeasured, "max_relative_loss": sweep_cfg.max_relative_loss,
        "loss_bound": sweep_cfg.loss_bound, "latency_tolerance": sweep_cfg.latency_tolerance, "select_latency": latency_key,
        "points": points, "pareto": [points[i]["label"] for i in front],
        "chosen": best, "unpruned": points[0],
        "speedup": best["speedup"], "quality_loss": best["loss"], "quality_loss_hi": best.get("loss_hi"),
        "test": head, "seconds": round(time.perf_counter() - t0, 1),
    }


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The flat stage metrics (metrics/calibrate_pruning.json, the MLflow run)."""
    best = result["chosen"]
    out: dict[str, Any] = {"chosen": best["label"], "n_points": len(result["points"]), "n_pareto": len(result["pareto"]),
                           "val_queries": result["val_queries"], "k": result["k"], "seconds": result["seconds"]}
    out.update({f"val_speedup_{k}": v for k, v in best["speedup"].items()})
    out.update({f"val_loss_{m}": v for m, v in best["loss"].items()})
    out.update({f"val_loss_hi_{m}": v for m, v in (best.get("loss_hi") or {}).items()})
    out.update({f"val_{m}": best["quality"][m] for m in ("hr@10", "ndcg@10", "sim_orders_per_1k", "logged_orders_per_1k") if m in best["quality"]})
    if result["test"]:
        test = result["test"]
        out.update({f"test_speedup_{k}": v for k, v in test["speedup"].items()})
        out.update({f"test_loss_{m}": v for m, v in test["loss"].items()})
    return out


def _log_choice(points, chosen_i, *, front, sweep, latency_key, test) -> None:
    best, base = points[chosen_i], points[0]
    losses = ", ".join(f"{m} {100 * v:+.2f}%" for m, v in best["loss"].items())
    if chosen_i == 0:
        log.info("calibrate_pruning: chose no pruning: no point of %d was faster within %.1f%% relative loss on %s",
                 len(points), 100 * sweep.max_relative_loss, ", ".join(best["loss"]))
    else:
        log.info("calibrate_pruning: chose %s: fastest within %.1f%% loss (loss %s); %s %.2f ms vs %.2f ms unpruned (%.2fx); Pareto set: %s",
                 best["label"], 100 * sweep.max_relative_loss, losses, latency_key, best["latency"][latency_key],
                 base["latency"][latency_key], best["speedup"].get(latency_key, float("nan")), ", ".join(points[i]["label"] for i in front))
        faster = [p for p in points if p["latency"][latency_key] < best["latency"][latency_key]]
        if faster:
            worst = max(faster, key=lambda p: p["latency"][latency_key])
            log.info("calibrate_pruning: the next faster point, %s, loses %s", worst["label"],
                     ", ".join(f"{m} {100 * v:.2f}%" for m, v in worst["loss"].items()))
    if test:
        log.info("calibrate_pruning: TEST check on %d queries: loss %s; speed-up %s", test["queries"],
                 ", ".join(f"{m} {100 * v:+.2f}%" for m, v in test["loss"].items()),
                 ", ".join(f"{k} {v:.2f}x" for k, v in test["speedup"].items()))
