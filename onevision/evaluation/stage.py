"""Stage ``evaluate``: every available system on the TEST split, side by side.

Writes ``metrics/evaluate.json`` (through the stage registry: one object per
system, keyed by system name), ``reports/evaluate.md`` and the plots
``plots/evaluate_quality_latency.png`` and ``plots/evaluate_per_k.png``.
Systems come from :func:`onevision.evaluation.systems.build_systems`; a system
whose artifacts are missing (OneVision before its stages ran) is skipped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from onevision import paths
from onevision.config import Config

log = logging.getLogger(__name__)

REPORT = paths.REPORTS / "evaluate.md"


def run_evaluation(cfg: Config, root: Path, systems=None, measure_cost: bool = True, encoder=None) -> dict[str, dict[str, Any]]:
    """Evaluate ``systems`` (default: every available one) and write the report and plots; return the per-system metrics.

    ``encoder`` replaces the saved one for the registry's systems (tests inject a fake).
    """
    from onevision.evaluation.cost import limit_threads
    from onevision.evaluation.harness import evaluate_systems, load_test_set
    from onevision.evaluation.report import markdown_report, plot_results
    from onevision.evaluation.systems import build_systems

    t0 = time.perf_counter()
    test = load_test_set(cfg, root)
    systems = build_systems(cfg, root, encoder=encoder) if systems is None else systems
    if not systems:
        raise RuntimeError("no system to evaluate: run the stages that build them (align_encoder, mca, ...)")
    shown = cfg.evaluate.shown or cfg.data.impressions_per_query
    with limit_threads(cfg.evaluate.threads):
        runs = evaluate_systems(systems, test, cfg.evaluate, shown, seed=cfg.seed, measure_cost=measure_cost)
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
    report.write_text(markdown_report(results, cfg.evaluate.ks, facts))
    plot_results(results, cfg.evaluate.ks, root / paths.PLOTS)
    log.info("evaluate: %d systems on %d test queries in %.0f s (report: %s)", len(results), len(test), facts["seconds"], report)
    return results


def evaluate(cfg: Config, root: Path) -> dict[str, Any]:
    """Stage ``evaluate``: returns one metrics object per system (the registry writes metrics/evaluate.json)."""
    return run_evaluation(cfg, Path(root))
