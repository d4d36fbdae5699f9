"""Stage ``evaluate``: every available system on the TEST split, side by side.

Writes ``metrics/evaluate.json`` (through the stage registry: one object per
system, keyed by system name), ``reports/evaluate.md``, the visual report
``reports/evaluate.html`` (photos of queries and results) and the plots
``plots/evaluate_quality_latency.png`` and ``plots/evaluate_per_k.png``.
Systems come from :func:`onevision.comparison.systems.build_systems`; a system
whose artifacts are missing (OneVision before its stages ran) is skipped.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from onevision import atomic, paths
from onevision.config import Config
from onevision.data.images import encode_png
from onevision.evaluation.cost import limit_threads
from onevision.evaluation.metrics import ORDERS, ORDERS_LABELS, resolve_metric
from onevision.evaluation.visual import (
    EXAMPLES,
    Page,
    Row,
    catalog_lookups,
    favourite_brands,
    headline_table,
    personalisation_rows,
    write_page,
)
from onevision.mca import RANKER_CHANGE
from onevision.stages import Stage

log = logging.getLogger(__name__)

STAGES = (
    Stage("evaluate", "onevision.comparison.stage:evaluate", reads=("data", "mca", "evaluate", "generative.decode"),
          deps=("data/validated", "data/splits", "models/encoder", "data/embeddings", "models/mca", "models/generative/pretrain",
                "models/generative/sft", "models/generative/dpo", "models/pruning", "data/sids"),
          outs=("reports/evaluate.md", "reports/evaluate.html", "reports/evaluate_examples.json"),
          plots=("plots/evaluate_quality_latency.png", "plots/evaluate_per_k.png"), metrics=("metrics/headline.json",),
          artifacts=("reports/evaluate.html",), doc="every system on the TEST split, side by side"),
)

REPORT = paths.REPORTS / "evaluate.md"
VISUAL_REPORT = paths.REPORTS / "evaluate.html"  # self-contained: photos and plots inlined
EXAMPLES_FILE = paths.REPORTS / "evaluate_examples.json"  # the report's queries, for the promotion's candidate page


def run_evaluation(cfg: Config, root: Path, systems=None, measure_cost: bool = True, encoder=None) -> dict[str, dict[str, Any]]:
    """Evaluate ``systems`` (default: every available one) and write the report and plots; return the per-system metrics.

    ``encoder`` replaces the saved one for the registry's systems (tests inject a fake).
    """
    # lazy: a stage module is imported for its declaration (stage list, dvc-yaml); pandas, torch only when the stage runs
    from onevision.comparison.report import markdown_report, plot_results
    from onevision.comparison.systems import build_systems
    from onevision.evaluation.harness import evaluate_systems, load_test_set

    t0 = time.perf_counter()
    test = load_test_set(cfg, root)
    systems = build_systems(cfg, root, encoder=encoder) if systems is None else systems
    if not systems:
        raise RuntimeError("no system to evaluate: run the stages that build them (align_encoder, mca, ...)")
    shown = cfg.evaluate.shown or cfg.data.impressions_per_query
    with limit_threads(cfg.evaluate.threads):
        runs = evaluate_systems(systems, test, ecfg=cfg.evaluate, shown=shown, seed=cfg.seed, measure_cost=measure_cost)
    results = {run.name: run.metrics for run in runs}
    facts = {
        "test queries": len(test),
        "catalog items": test.n_items,
        "systems": ", ".join(results),
        "shown per query (a result page)": shown,
        "orders measured by": "the user simulator" if test.simulator is not None else "replay of the logged orders (no simulator)",
        "seed": cfg.seed,
        "profile": cfg.profile,
        "baseline": cfg.evaluate.baseline,
        "ci_level": cfg.evaluate.ci_level,
        "threads": cfg.evaluate.threads or "library defaults",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report = root / REPORT
    report.parent.mkdir(parents=True, exist_ok=True)
    if "mca" in results:
        facts["MCA baseline"] = RANKER_CHANGE
    note = dpo_note(root)
    if note:
        facts["note"] = note
    atomic.write_text(report, markdown_report(results, cfg.evaluate.ks, facts))
    plot_results(results, cfg.evaluate.ks, root / paths.PLOTS)
    try:
        sheet = write_visual_report(cfg, root, test=test, runs=runs, systems=systems, results=results, facts=facts)
        log.info("evaluate: visual report %s", sheet)
    except Exception:  # noqa: BLE001 - a picture must never fail the evaluation it illustrates
        log.exception("evaluate: the visual report could not be written (the metrics and reports/evaluate.md are complete)")
    log.info("evaluate: %d systems on %d test queries in %.0f s (report: %s)", len(results), len(test), facts["seconds"], report)
    return results


def dpo_note(root: Path) -> str | None:
    """Say so when DPO kept its input (its row then equals onevision_sft's in every number)."""

    path = root / paths.metrics_file("dpo")
    if not path.exists():
        return None
    kept = json.loads(path.read_text()).get("kept_epoch")
    if kept == 0:
        return ("DPO kept its input: no DPO epoch raised the VAL selection metric, so `onevision` is the SFT model "
                "(its row equals `onevision_sft`).")
    return None


def write_visual_report(cfg: Config, root: Path, *, test, runs, systems, results: dict[str, dict[str, Any]], facts: dict[str, Any]) -> Path:
    """``reports/evaluate.html``: query photos with OneVision's and MCA's top 10, personalisation, the table and plots."""
    # lazy: a stage module is imported for its declaration (stage list, dvc-yaml); pandas only when the stage runs
    import pandas as pd

    items = pd.read_parquet(root / paths.VALIDATED / "items.parquet")
    photo, label, category = catalog_lookups(root, items)
    ranked = {run.name: run.ranked for run in runs}
    shown = [name for name in ("onevision", "mca") if name in ranked] or list(ranked)[:2]
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x515]))
    picks = np.sort(rng.choice(len(test), min(EXAMPLES, len(test)), replace=False))
    rows = [Row(f"query {int(test.query_ids[q])}, shopper {int(test.user_ids[q])}", test.images[q], int(test.target_ids[q]),
                {name: ranked[name][q] for name in shown}, user=int(test.user_ids[q])) for q in picks]
    personal, note = [], ""
    ours = next((s for s in systems if s.name == "onevision"), None)
    if ours is not None:
        brand_of = dict(zip(items["item_id"].astype(int), items["brand"].astype(str), strict=True))
        personal, note = personalisation_rows(ours, test.images, targets=test.target_ids, favourites=favourite_brands(root, items), brand_of=brand_of)
    orders = resolve_metric(ORDERS, next(iter(results.values()), {}))
    header, table = headline_table(results, orders, ORDERS_LABELS.get(orders, orders))
    page = Page(
        title=f"OneVision offline evaluation — profile {cfg.profile}",
        facts={k: v for k, v in facts.items() if k in ("test queries", "catalog items", "profile", "seed", "orders measured by")},
        headline=header, table=table, rows=rows, personal=personal, personal_note=note,
        plots=[root / paths.PLOTS / "evaluate_quality_latency.png", root / paths.PLOTS / "evaluate_per_k.png"],
        item_photo=photo, item_label=label, category_of=category, notes=[n for n in (dpo_note(root),) if n],
    )
    write_examples(root / EXAMPLES_FILE, rows, photo)
    return write_page(page, root / VISUAL_REPORT)


def write_examples(path: Path, rows, item_photo) -> Path:
    """The visual report's queries as JSON (photos as base64 PNG, users, products, each system's list, the
    thumbnails of every listed item), so the promotion can show the same queries next to the champion's answers."""

    def b64(data: bytes | None) -> str | None:
        return base64.b64encode(data).decode("ascii") if data else None

    items = sorted({int(i) for r in rows for ids in r.lists.values() for i in ids if int(i) >= 0})
    doc = {
        "queries": [{"title": r.title, "photo": b64(encode_png(np.ascontiguousarray(r.photo))), "target": r.target,
                     "user_id": r.user,
                     "lists": {k: [int(i) for i in v] for k, v in r.lists.items()}} for r in rows],
        "thumbnails": {str(i): b64(item_photo(i)) for i in items},
    }
    atomic.write_json(path, doc, indent=None, sort_keys=False)
    return path


HEADLINE = paths.METRICS / "headline.json"
def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The few numbers `dvc metrics show` prints, a terminal wide: OneVision and MCA on HR@10 and orders
    (simulated, or logged for an imported catalog) with their ratio, and the NDCG@10 and p50 latency
    ratios. Everything else stays in metrics/<stage>.json (`dvc metrics show metrics/evaluate.json`)."""

    ours, base = results.get("onevision"), results.get("mca")
    if not ours or not base:
        return {}
    orders = resolve_metric(ORDERS, ours)
    out: dict[str, Any] = {}
    for key, name, both in (("hr@10", "hr@10", True), (orders, "orders", True), ("ndcg@10", "ndcg@10", False), ("latency_p50_ms", "p50_ms", False)):
        a, b = ours.get(key), base.get(key)
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and b):
            continue
        out[name] = ({"onevision": round(float(a), 4), "mca": round(float(b), 4)} if both else {}) | {"ratio": round(a / b, 4)}
    return out


def evaluate(cfg: Config, root: Path) -> dict[str, Any]:
    """Stage ``evaluate``: returns one metrics object per system (the registry writes metrics/evaluate.json)
    and writes the headline (metrics/headline.json)."""

    results = run_evaluation(cfg, Path(root))
    path = Path(root) / HEADLINE
    atomic.write_json(path, headline(results))
    return results
