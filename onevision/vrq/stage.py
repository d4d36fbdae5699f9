"""Stage ``vrq``: train the VRQ tokenizer on the aligned embeddings, write codebooks and SIDs.

Reads ``data/embeddings/{items,views}.npz`` (stage align_encoder),
``data/validated/items.parquet`` (categories) and ``models/encoder/encoder.json``
(the encoder's probe numbers, for the ratios). Writes ``models/vrq/``,
``data/sids/sid_table.parquet``, ``plots/vrq.png`` and ``reports/vrq.md``;
returns the tokenizer metrics, each also for the plain RQ-KMeans tokenizer it
was initialised from (``rqkmeans.*``) and the VRQ / RQ-KMeans ratios.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevision import atomic, markdown, paths
from onevision.config import Config
from onevision.encoder.api import (
    CATALOG,
    ENCODER_DIR,
    TRAIN_QUERY,
    VAL_QUERY,
    load_item_embeddings,
    load_view_embeddings,
)
from onevision.plots import pyplot
from onevision.reproducible import deterministic_torch
from onevision.stages import Stage
from onevision.vrq.api import SID_TABLE, VRQ_DIR, build_sid_table, sid_columns
from onevision.vrq.metrics import tokenizer_report
from onevision.vrq.train import VRQTrainingData, train_vrq

log = logging.getLogger(__name__)

STAGES = (
    Stage("vrq", "onevision.vrq.stage:vrq", reads=("vrq",), deps=("data/embeddings", "data/validated/items.parquet", "models/encoder"),
          outs=("models/vrq", "data/sids", "reports/vrq.md"), plots=("plots/vrq.png",),
          doc="train the residual quantiser; give every item its semantic ID"),
)

# metrics compared against RQ-KMeans in the ratios (higher is better for all)
RATIO_KEYS = ("consistency_l1", "consistency_l12", "icr", "beam10_recall", "prefix1_hit")


def vrq(cfg: Config, root: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    deterministic_torch()
    root = Path(root)
    item_ids, item_emb = load_item_embeddings(root)
    views = load_view_embeddings(root)
    row_of = pd.Series(np.arange(len(item_ids)), index=item_ids)
    owner = row_of.reindex(views["item_ids"]).to_numpy()
    if np.isnan(owner).any():
        raise ValueError("views.npz holds views of items missing from items.npz: rerun stage align_encoder")
    owner = owner.astype(np.int64)
    kind = views["kind"]
    items = pd.read_parquet(root / paths.VALIDATED / "items.parquet", columns=["item_id", "category"]).set_index("item_id")
    categories = items["category"].reindex(item_ids).to_numpy(np.int64)

    fit_kinds = (CATALOG, TRAIN_QUERY) if cfg.vrq.use_query_views else (CATALOG,)
    fit = np.isin(kind, fit_kinds)
    data = VRQTrainingData(item_emb=item_emb, view_emb=views["embeddings"][fit], view_owner=owner[fit], categories=categories)
    tokenizer, baseline, train_log = train_vrq(data, cfg.vrq, seed=cfg.seed)

    codes = tokenizer.encode(item_emb)
    table = build_sid_table(item_ids, codes)
    with atomic.atomic_path(root / SID_TABLE) as tmp:
        table.to_parquet(tmp, index=False)
    tokenizer.save(root / VRQ_DIR)

    # held-out shopper photos (VAL split) measure consistency and retrieval through codes
    val, cat = kind == VAL_QUERY, kind == CATALOG
    report_args = {"query_emb": views["embeddings"][val], "query_owner": owner[val], "catalog_emb": views["embeddings"][cat], "catalog_owner": owner[cat]}
    vrq_m = tokenizer_report(tokenizer, item_emb, **report_args)
    base_m = tokenizer_report(baseline, item_emb, **report_args)
    last = table[sid_columns(tokenizer.num_levels)[-1]]
    metrics: dict[str, Any] = {
        **vrq_m,
        "items": int(len(item_ids)),
        "levels": tokenizer.num_levels,
        "sid_length": tokenizer.num_levels + 1,
        "sids_unique": bool(not table.duplicated(sid_columns(tokenizer.num_levels)).any()),
        "disambiguation_max": int(last.max()),
        "disambiguated_items": int((last > 0).sum()),
        "dead_codes_reseeded": int(sum(train_log.dead_codes_reseeded)),
        "val_queries": int(val.sum()),
        "fit_views": int(fit.sum()),
        "train_seconds": round(train_log.seconds, 3),
        "rqkmeans": base_m,
        "vs_rqkmeans": {k: vrq_m[k] / max(base_m[k], 1e-9) for k in RATIO_KEYS if k in vrq_m},
        "history": {f"e{h['epoch']:03d}": {k: v for k, v in h.items() if k != "epoch"} for h in train_log.history},
    }
    enc_meta = root / ENCODER_DIR / "encoder.json"
    if enc_meta.exists():
        extra = json.loads(enc_meta.read_text()).get("extra", {})
        if "probe_top1" in extra and "probe_top1_untrained" in extra:
            metrics["encoder"] = {
                "probe_top1": extra["probe_top1"],
                "probe_top1_untrained": extra["probe_top1_untrained"],
                "top1_vs_untrained": extra["probe_top1"] / max(extra["probe_top1_untrained"], 1e-9),
            }
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    plot_tokenizer(metrics, train_log.history, root / paths.PLOTS / "vrq.png")
    _write_report(root, cfg, metrics)
    log.info("vrq: ICR %.3f, consistency l1 %.3f (RQ-KMeans %.3f), l1..2 %.3f (RQ-KMeans %.3f) in %.1f s",
             metrics["icr"], metrics["consistency_l1"], base_m["consistency_l1"], metrics.get("consistency_l12", float("nan")),
             base_m.get("consistency_l12", float("nan")), metrics["seconds"])
    return metrics


def plot_tokenizer(metrics: dict[str, Any], history: list[dict], path: Path) -> Path:
    plt = pyplot()

    levels = range(metrics["levels"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    ax = axes[0]
    width = 0.38
    for offset, (name, m) in zip((-width / 2, width / 2), (("VRQ", metrics), ("RQ-KMeans", metrics["rqkmeans"])), strict=True):
        ax.bar([lv + offset for lv in levels], [m[f"level{lv}_cur"] for lv in levels], width, label=name)
    ax.set_xticks(list(levels), [f"L{lv + 1} ({metrics[f'level{lv}_size']})" for lv in levels])
    ax.set_ylim(0, 1.05)
    ax.set_title("codebook utilisation per level")
    ax.legend()
    ax = axes[1]
    keys = [k for k in ("consistency_l1", "consistency_l12", "icr", "prefix1_hit", "beam10_recall") if k in metrics]
    x = np.arange(len(keys))
    ax.bar(x - width / 2, [metrics[k] for k in keys], width, label="VRQ")
    ax.bar(x + width / 2, [metrics["rqkmeans"][k] for k in keys], width, label="RQ-KMeans")
    ax.set_xticks(x, [k.replace("consistency_", "cons ") for k in keys], rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_title("VAL query views: consistency and retrieval")
    ax.legend()
    ax = axes[2]
    if history:
        ep = [h["epoch"] for h in history]
        ax.plot(ep, [h["recon"] for h in history], label="reconstruction")
        ax.plot(ep, [h["consistency"] for h in history], label="consistency CE")
        ax2 = ax.twinx()
        ax2.plot(ep, [h["view_agree_l1"] for h in history], color="tab:green", label="view agreement L1")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_title("VRQ fine-tuning")
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def _write_report(root: Path, cfg: Config, metrics: dict[str, Any]) -> None:
    base = metrics["rqkmeans"]
    rows = [
        ("ICR (unique before disambiguation)", "icr"), ("max items per SID", "max_items_per_sid"),
        ("consistency level 1 (VAL queries)", "consistency_l1"), ("consistency levels 1..2", "consistency_l12"),
        ("catalog-view consistency level 1", "catalog_view_consistency_l1"), ("prefix-1 candidates per query", "prefix1_candidates"),
        ("beam-10 recall (constrained)", "beam10_recall"), ("beam-1 recall", "beam1_recall"),
        ("reconstruction error (relative)", "recon_relative"), ("round trip codes->vector->codes", "round_trip"),
    ]
    rows += [(f"level {lv + 1} CUR / perplexity", f"level{lv}_cur") for lv in range(metrics["levels"])]
    lines = [
        "# vrq",
        "",
        f"{metrics['items']} items, codebooks {cfg.vrq.codebook_sizes} + disambiguation level "
        f"(max index {metrics['disambiguation_max']}, {metrics['disambiguated_items']} items need it); "
        f"all SIDs unique: {metrics['sids_unique']}. Fit on {metrics['fit_views']} views in {metrics['train_seconds']:.1f} s; "
        f"{metrics['dead_codes_reseeded']} dead codes re-seeded.",
        "",
    ]

    def cell(m: dict[str, Any], key: str) -> str:
        if key.endswith("_cur"):
            return f"{m[key]:.3f} / {m[key.replace('_cur', '_perplexity')]:.1f}"
        return ("{:.0f}" if key == "max_items_per_sid" else "{:.1f}" if key == "prefix1_candidates" else "{:.3f}").format(m[key])

    table = [[label, cell(metrics, key), cell(base, key)] for label, key in rows if key in metrics]
    lines += [markdown.table(table, ["metric", "VRQ", "RQ-KMeans (same sizes)"], align="lrr"), "", "![tokenizer](../plots/vrq.png)", ""]
    path = root / paths.REPORTS / "vrq.md"
    atomic.write_text(path, "\n".join(lines))
