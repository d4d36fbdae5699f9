"""The evaluation's human-readable outputs: a markdown report and plots.

Everything here reads the flat per-system metrics that also go to
``metrics/evaluate.json``, so the report and the JSON never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onevision import atomic, markdown
from onevision.evaluation.metrics import ORDERS, ORDERS_LABELS, pareto_front, resolve_metric
from onevision.plots import pyplot


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(m: dict[str, Any], key: str, digits: int = 1) -> str:
    if m.get(key) is None:
        return "–"
    lo, hi = m.get(f"{key}_ci_lo"), m.get(f"{key}_ci_hi")
    return f"{m[key]:.{digits}f} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]" if lo is not None else _fmt(m[key], digits)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A table's lines and a blank one: the first column names the row, the others hold numbers (right-aligned)."""
    return [*markdown.table(rows, header, align="l" + "r" * (len(header) - 1)).splitlines(), ""]


def markdown_report(results: dict[str, dict[str, Any]], ks: list[int], facts: dict[str, Any]) -> str:
    """The report of ``reports/evaluate.md``."""
    names = list(results)
    lines = ["# Offline evaluation", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", "## Exact item (the photographed product)", ""]
    header = ["system", *[f"HR@{k}" for k in ks], *[f"NDCG@{k}" for k in ks], "MRR", *[f"cat P@{k}" for k in ks]]
    rows = [[n, *[_fmt(results[n].get(f"hr@{k}")) for k in ks], *[_fmt(results[n].get(f"ndcg@{k}")) for k in ks],
             _fmt(results[n].get("mrr")), *[_fmt(results[n].get(f"cat_precision@{k}")) for k in ks]] for n in names]
    lines += _table(header, rows)
    lines += ["Recall@K equals HR@K here: each query has exactly one relevant item (its product). "
              "cat P@K: share of the top K in the product's category.", ""]
    k10 = 10 if 10 in ks else ks[-1]
    lines += [f"HR@{k10} and MRR with {facts.get('ci_level', 0.95):.0%} bootstrap intervals:", ""]
    lines += _table(["system", f"HR@{k10}", "MRR"], [[n, _ci(results[n], f"hr@{k10}", 3), _ci(results[n], "mrr", 3)] for n in names])

    for prefix, title in (("click", "Click test set (queries with a logged click)"), ("order", "Order test set (queries with a logged order)")):
        first = results[names[0]] if names else {}
        lines += [f"## {title}: {first.get(f'{prefix}_queries', 0)} queries", ""]
        header = ["system", *[f"HR@{k}" for k in ks], *[f"Recall@{k}" for k in ks], *[f"MRR@{k}" for k in ks]]
        rows = [[n, *[_fmt(results[n].get(f"{prefix}_{m}@{k}")) for m in ("hr", "recall", "mrr") for k in ks]] for n in names]
        lines += _table(header, rows)

    level = f"{facts.get('ci_level', 0.95):.0%}"
    if any("sim_orders_per_1k" in results[n] for n in names):
        shown = results[names[0]].get("sim_shown")
        lines += [f"## Simulated shoppers (top {shown} shown; per 1,000 queries, {level} bootstrap intervals)", ""]
        rows = [[n, _ci(results[n], "sim_clicks_per_1k"), _ci(results[n], "sim_orders_per_1k"), _ci(results[n], "sim_conversion", 3),
                 _fmt(results[n].get("sim_exact_click_rate"))] for n in names]
        lines += _table(["system", "clicks / 1k", "orders / 1k", "conversion (orders/click)", "P(click exact)"], rows)
    if any("logged_orders_per_1k" in results[n] or "logged_clicks_per_1k" in results[n] for n in names):
        shown = results[names[0]].get("logged_shown")
        lines += [f"## Replay of the search log (top {shown} shown; per 1,000 queries, {level} bootstrap intervals)", "",
                  "Logged clicks and orders whose item the system's result page contains. Shoppers acted only on what "
                  "the logging system showed them, so this favours lists like that system's.", ""]
        rows = [[n, _ci(results[n], "logged_clicks_per_1k"), _ci(results[n], "logged_orders_per_1k")] for n in names]
        lines += _table(["system", "logged clicks shown / 1k", "logged orders shown / 1k"], rows)
    orders = resolve_metric(ORDERS, results[names[0]]) if names else None
    pairs = (("hr@10", 3), ("mrr", 3), (orders, 1))
    base = facts.get("baseline")
    deltas = [n for n in names if f"vs_{base}_{orders}_delta" in results[n]]
    if deltas:
        lines += [f"Paired differences against `{base}` (same queries, bootstrap over queries; orders: {ORDERS_LABELS[orders]}):", ""]
        rows = []
        for n in deltas:
            m = results[n]
            rows.append([n] + [_ci({"d": m.get(f"vs_{base}_{key}_delta"), "d_ci_lo": m.get(f"vs_{base}_{key}_delta_ci_lo"),
                                    "d_ci_hi": m.get(f"vs_{base}_{key}_delta_ci_hi")}, "d", digits) for key, digits in pairs])
        lines += _table(["system", "Δ HR@10", "Δ MRR", "Δ orders / 1k"], rows)
    gains = [n for n in names if f"stage_gain_{orders}_delta" in results[n]]
    if gains:
        lines += ["Each alignment stage against the one before it (onevision_sft - onevision_pretrain, onevision - onevision_sft; paired):", ""]
        rows = [[n] + [_ci({"d": results[n].get(f"stage_gain_{key}_delta"), "d_ci_lo": results[n].get(f"stage_gain_{key}_delta_ci_lo"),
                            "d_ci_hi": results[n].get(f"stage_gain_{key}_delta_ci_hi")}, "d", digits) for key, digits in pairs] for n in gains]
        lines += _table(["stage", "Δ HR@10", "Δ MRR", "Δ orders / 1k"], rows)

    if any("latency_p50_ms" in results[n] for n in names):
        lines += ["## Cost", "", "Batch-1 latency after warm-up (ms), throughput in batches, peak memory of one batch call.", ""]
        rows = [[n, f"{_fmt(results[n].get('latency_mean_ms'), 2)} ± {_fmt(results[n].get('latency_std_ms'), 2)}",
                 *[_fmt(results[n].get(f"latency_{p}_ms"), 2) for p in ("p50", "p95", "p99")],
                 _fmt(results[n].get("qps"), 0), _fmt(results[n].get("peak_rss_delta_mb"), 1), _fmt(results[n].get("peak_traced_mb"), 1)]
                for n in names]
        lines += _table(["system", "mean ± std", "p50", "p95", "p99", "QPS", "peak RSS Δ (MB)", "peak traced (MB)"], rows)

    staged = [n for n in names if "stages" in results[n]]
    for n in staged:
        m = results[n]
        lines += [f"## Stages of `{n}`", "", "Exact-item hit rate after each cut; loss = what the cut dropped.", ""]
        ms = m.get("stage_ms_per_query", {})
        p50 = m.get("stage_latency_p50_ms", {})
        rows = [[stage, str(s["size"]), _fmt(s["exact_hit"]), _fmt(s["loss"]), _fmt(ms.get(stage), 3), _fmt(p50.get(stage), 3)]
                for stage, s in m["stages"].items()]
        lines += _table(["stage", "kept", "exact hit", "loss", "ms/query (batched)", "p50 ms (batch 1)"], rows)
    lines += ["Plots: `plots/evaluate_quality_latency.png`, `plots/evaluate_per_k.png`.", ""]
    return "\n".join(lines)


def plot_results(results: dict[str, dict[str, Any]], ks: list[int], plots_dir: Path) -> list[Path]:
    """Quality vs latency (with the Pareto front) and the per-K curves."""
    plt = pyplot()

    plots_dir.mkdir(parents=True, exist_ok=True)
    names = list(results)
    written = []
    k10 = 10 if 10 in ks else ks[-1]
    timed = [n for n in names if results[n].get("latency_p50_ms") is not None]
    if timed:
        panels = [(f"hr@{k10}", f"exact-item HR@{k10}")]
        orders = resolve_metric(ORDERS, results[timed[0]])
        if all(results[n].get(orders) is not None for n in timed):
            panels.append((orders, f"{ORDERS_LABELS[orders]} queries"))
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 2.5, 4.8), squeeze=False)
        # One colour and marker per system and a legend, not labels at the points: OneVision's variants sit
        # on top of each other (pruned = unpruned, DPO = SFT when it kept its input) and their labels collided.
        markers = "o^sDvP*Xh<>p"
        colours = plt.get_cmap("tab10" if len(timed) <= 10 else "tab20")
        for ax, (key, label) in zip(axes[0], panels, strict=True):
            pts = [(results[n][key], results[n]["latency_p50_ms"]) for n in timed]
            for i, (n, (q, lat)) in enumerate(zip(timed, pts, strict=True)):
                ax.scatter(lat, q, s=70 if n in ("onevision", "mca") else 45, marker=markers[i % len(markers)],
                           color=colours(i % colours.N), edgecolor="black" if n in ("onevision", "mca") else "none",
                           label=n, zorder=3, alpha=0.9)
            front = pareto_front(pts)
            ax.plot([pts[i][1] for i in front], [pts[i][0] for i in front], "--", color="grey", lw=1, label="Pareto front", zorder=2)
            ax.set_xscale("log")
            ax.set_xlabel("p50 latency, batch 1 (ms, log)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
        fig.suptitle("Quality vs latency (TEST split)")
        fig.tight_layout(rect=(0, 0, 1 - 2.3 / fig.get_figwidth(), 1))
        path = plots_dir / "evaluate_quality_latency.png"
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        written.append(path)

    metrics = [("hr", "exact-item HR@K"), ("ndcg", "exact-item NDCG@K"), ("cat_precision", "same-category precision@K"), ("click_hr", "click set HR@K")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics, strict=True):
        for n in names:
            ys = [results[n].get(f"{key}@{k}") for k in ks]
            ax.plot(ks, [y if y is not None else float("nan") for y in ys], marker="o", label=n)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = plots_dir / "evaluate_per_k.png"
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
