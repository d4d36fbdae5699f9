"""The calibration's report: the Pareto plot and the markdown table of every point (onevision.generative.calibrate)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from onevision import atomic, markdown
from onevision.plots import pyplot


def plot_pareto(points, front, *, chosen_i, latency_key, max_loss, path: Path) -> Path:
    """Worst retained quality vs latency of every point, the Pareto front, the bound and the choice."""
    plt = pyplot()

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    lat = [p["latency"][latency_key] for p in points]
    q = [p["retained"] if np.isfinite(p["retained"]) else 0.0 for p in points]
    ax.scatter(lat, q, s=25, color="tab:blue", alpha=0.6, label="sweep points")
    bounded = [i for i, p in enumerate(points) if p.get("loss_hi") and np.isfinite(max(p["loss_hi"].values()))]
    if bounded:  # how low the worst guarded metric may be at the 95 % bound: what eligibility reads
        ax.vlines([lat[i] for i in bounded], [1.0 - max(points[i]["loss_hi"].values()) for i in bounded], [q[i] for i in bounded],
                  color="tab:blue", alpha=0.35, lw=2, label="down to the loss's 95 % upper bound")
    ax.plot([lat[i] for i in front], [q[i] for i in front], "-o", color="tab:orange", lw=1.2, ms=5, label="Pareto set")
    ax.scatter([lat[0]], [q[0]], marker="s", s=70, color="black", label=f"no pruning ({lat[0]:.2f} ms)")
    ax.scatter([lat[chosen_i]], [q[chosen_i]], marker="*", s=220, color="tab:red", zorder=5, label=f"chosen: {points[chosen_i]['label']}")
    ax.axhline(1.0 - max_loss, color="grey", ls="--", lw=1, label=f"allowed loss {100 * max_loss:g}%")
    for i in front:
        ax.annotate(points[i]["label"], (lat[i], q[i]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"decoding latency, {latency_key.replace('_', ' ')}")
    ax.set_ylabel("worst retained share of the guarded metrics (1 = unpruned)")
    ax.set_title("Dynamic pruning: quality vs latency (VAL)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:+.2f}%" if pct else f"{v:.4g}"


def markdown_report(result: dict[str, Any]) -> str:
    guarded, key = result["guarded_metrics"], result["select_latency"]
    best = result["chosen"]
    lines = [
        "# Dynamic pruning calibration",
        "",
        f"{len(result['points'])} points on {result['val_queries']} VAL queries (k={result['k']}, beam width {result['beam_width']}); "
        f"chosen: the fastest point by {key} whose relative loss on {', '.join(guarded)} is at most {100 * result['max_relative_loss']:g}%"
        + (" at the upper end of its paired-bootstrap 95 % interval" if result.get("loss_bound") else "")
        + (f"; points within {100 * result['latency_tolerance']:g} % of the fastest such point's latency tie, and the one with the most "
           "retained quality wins" if result.get("latency_tolerance") else "") + ".",
        "",
        f"**Chosen: `{best['label']}`**: speed-up {', '.join(f'{k} {v:.2f}x' for k, v in best['speedup'].items())}; "
        f"loss {', '.join(f'{m} {_fmt(v, True)}' for m, v in best['loss'].items())}"
        + (f" (95 % upper bound {', '.join(f'{m} {_fmt(v, True)}' for m, v in best['loss_hi'].items())})" if best.get("loss_hi") else "") + ".",
        "",
    ]
    test = result.get("test")
    if test:
        lines += [
            f"TEST check ({test['queries']} queries, unpruned vs chosen, same queries, batch-1 calls interleaved): "
            f"speed-up {', '.join(f'{k} {v:.2f}x' for k, v in test['speedup'].items())}; "
            f"loss {', '.join(f'{m} {_fmt(v, True)}' for m, v in test['loss'].items())}.",
            "",
        ]
    hi = [m for m in guarded if all("loss_hi" in p for p in result["points"])]
    cols = ["point", "pareto", *guarded, *(f"loss {m}" for m in guarded), *(f"loss {m} (95 % hi)" for m in hi), "ndcg@10", "b1 p50 ms",
            "b1 p95 ms", "batched ms/q", "speed-up"]
    rows = [[f"**{p['label']}**" if p is best else p["label"], "yes" if p["pareto"] else "",
             *(_fmt(p["quality"].get(m)) for m in guarded), *(_fmt(p["loss"][m], True) for m in guarded),
             *(_fmt(p["loss_hi"][m], True) for m in hi),
             _fmt(p["quality"].get("ndcg@10")), _fmt(p["latency"]["batch1_p50_ms"]), _fmt(p["latency"]["batch1_p95_ms"]),
             _fmt(p["latency"]["batched_ms_per_query"]), _fmt(p["speedup"].get(key))]
            for p in sorted(result["points"], key=lambda p: p["latency"][key])]
    lines.append(markdown.table(rows, cols, align="ll" + "r" * (len(cols) - 2)))
    lines += ["", "![Pareto](../plots/pruning_pareto.png)", ""]
    return "\n".join(lines)
