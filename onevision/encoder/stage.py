"""Stage ``align_encoder``: train the aligned encoder, write it and the item embeddings.

Reads ``data/validated/{items,views,queries}.parquet`` and
``data/splits/assignment.parquet``; trains on TRAIN-split queries only and
probes on VAL-split queries. Writes ``models/encoder/``,
``data/embeddings/items.npz``, ``plots/align_encoder.png`` and
``reports/align_encoder.md``; returns the metrics (with the per-epoch history).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevision import atomic, distributed, markdown, paths
from onevision.config import Config
from onevision.data.split import ASSIGNMENT_FILE
from onevision.encoder.api import (
    ENCODER_DIR,
    decode_image_column,
    fuse_views,
    save_item_embeddings,
    save_view_embeddings,
)
from onevision.encoder.train import AlignData, train_encoder
from onevision.plots import pyplot
from onevision.stages import Stage

log = logging.getLogger(__name__)

STAGES = (
    Stage("align_encoder", "onevision.encoder.stage:align_encoder", reads=("data", "encoder"),
          deps=("data/validated/items.parquet", "data/validated/views.parquet", "data/validated/queries.parquet", "data/splits"),
          outs=("models/encoder", "data/embeddings", "reports/align_encoder.md"), plots=("plots/align_encoder.png",),
          doc="train the vision-aligned encoder; embed every item"),
)


def load_align_data(cfg: Config, root: Path, max_val_queries: int | None = 2000) -> AlignData:
    """Decode catalog views and TRAIN/VAL query photos of the validated dataset."""

    root = Path(root)
    validated = root / paths.VALIDATED
    items = pd.read_parquet(validated / "items.parquet", columns=["item_id", "category"]).sort_values("item_id", kind="stable")
    views = pd.read_parquet(validated / "views.parquet").sort_values(["item_id", "view_id"], kind="stable")
    queries = pd.read_parquet(validated / "queries.parquet").sort_values("query_id", kind="stable")
    assignment = pd.read_parquet(root / paths.SPLITS / ASSIGNMENT_FILE, columns=["query_id", "split"])
    queries = queries.merge(assignment, on="query_id", how="inner", validate="one_to_one")
    item_ids = items["item_id"].to_numpy(np.int64)
    row_of = pd.Series(np.arange(len(item_ids)), index=item_ids)
    views = views[views["item_id"].isin(row_of.index)]
    queries = queries[queries["item_id"].isin(row_of.index)]
    train = queries[queries["split"] == "train"]
    val = queries[queries["split"] == "val"]
    if max_val_queries is not None and len(val) > max_val_queries:
        val = val.sample(max_val_queries, random_state=cfg.seed).sort_values("query_id", kind="stable")
    decode = lambda frame: decode_image_column(frame, cfg.data.import_dir, cfg.data.image_channels)  # noqa: E731
    return AlignData(
        item_ids=item_ids,
        categories=items["category"].to_numpy(np.int64),
        view_images=decode(views),
        view_owner=row_of[views["item_id"].to_numpy()].to_numpy(np.int64),
        train_images=decode(train),
        train_owner=row_of[train["item_id"].to_numpy()].to_numpy(np.int64),
        val_images=decode(val),
        val_owner=row_of[val["item_id"].to_numpy()].to_numpy(np.int64),
        view_ids=views["view_id"].to_numpy(np.int64),
        train_ids=train["query_id"].to_numpy(np.int64),
        val_ids=val["query_id"].to_numpy(np.int64),
    )


def plot_history(history: list[dict], path: Path, title: str = "align_encoder") -> Path:
    plt = pyplot()

    trained = [h for h in history if "loss" in h]
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "infonce", "circle"):
        ax1.plot([h["epoch"] for h in trained], [h[key] for h in trained], marker="o", label=key)
    ax1.set_xlabel("epoch")
    ax1.set_title("training loss")
    ax1.legend()
    for key in ("probe_top1", "probe_top10"):
        ax2.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("probe_", "VAL query→item "))
    ax2.set_xlabel("epoch (0: untrained)")
    ax2.set_ylim(0, 1)
    ax2.set_title("retrieval probe (exact kNN)")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def align_encoder(cfg: Config, root: Path) -> dict[str, Any]:
    """Train the aligned encoder; write it, the fused item embeddings, a plot and a report."""
    t0 = time.perf_counter()
    root = Path(root)
    data = load_align_data(cfg, root)
    load_s = time.perf_counter() - t0
    log.info("align_encoder: %d items, %d catalog views, %d train / %d val queries (decoded in %.1f s)",
             data.n_items, len(data.view_owner), len(data.train_owner), len(data.val_owner), load_s)
    encoder, history = train_encoder(
        data, cfg.encoder, seed=cfg.seed, image_size=cfg.data.image_size, channels=cfg.data.image_channels,
    )
    train_s = time.perf_counter() - t0 - load_s
    if not distributed.world().is_main:  # rank 0 writes the outputs of a data-parallel run
        return {}
    view_emb = encoder.embed(data.view_images)
    item_emb = fuse_views(view_emb, data.view_owner, data.n_items, cfg.encoder.fusion)
    save_view_embeddings(
        root,
        [(data.item_ids[data.view_owner], data.view_ids, view_emb), (data.item_ids[data.train_owner], data.train_ids, encoder.embed(data.train_images)),
         (data.item_ids[data.val_owner], data.val_ids, encoder.embed(data.val_images))],
    )
    encoder.extra = {"n_items": data.n_items, "epochs": cfg.encoder.epochs, "probe_top1": history[-1]["probe_top1"],
                     "probe_top1_untrained": history[0]["probe_top1"]}
    encoder.save(root / ENCODER_DIR)
    save_item_embeddings(root, data.item_ids, item_emb)
    plot_history(history, root / paths.PLOTS / "align_encoder.png")
    final, untrained = history[-1], history[0]
    metrics: dict[str, Any] = {
        "probe_top1": final["probe_top1"],
        "probe_top10": final["probe_top10"],
        "probe_top1_untrained": untrained["probe_top1"],
        "probe_top1_gain_over_untrained": final["probe_top1"] / max(untrained["probe_top1"], 1e-9),
        "final_loss": final["loss"],
        "items": data.n_items,
        "catalog_views": int(len(data.view_owner)),
        "train_queries": int(len(data.train_owner)),
        "probe_queries": int(len(data.val_owner)),
        "embed_dim": encoder.dim,
        "token_dim": encoder.token_dim,
        "num_tokens": encoder.num_tokens,
        "train_seconds": round(train_s, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        # per-epoch curves as history.eNN.<key> (the tracker flattens nested dicts into metric keys)
        "history": {f"e{h['epoch']:02d}": {k: v for k, v in h.items() if k != "epoch"} for h in history},
    }
    _write_report(root, cfg, metrics, history)
    return metrics


def _write_report(root: Path, cfg: Config, metrics: dict[str, Any], history: list[dict]) -> None:
    lines = [
        "# align_encoder",
        "",
        f"Backbone `{cfg.encoder.backbone}`, embedding {metrics['embed_dim']}-d, {metrics['num_tokens']} visual tokens of "
        f"{metrics['token_dim']}-d; L_align = {cfg.encoder.lambda_infonce}·InfoNCE + {cfg.encoder.lambda_circle}·circle; "
        f"fusion `{cfg.encoder.fusion}`.",
        "",
        f"Trained on {metrics['train_queries']} TRAIN query views and {metrics['catalog_views']} catalog views of "
        f"{metrics['items']} items in {metrics['train_seconds']:.1f} s. Probe: {metrics['probe_queries']} VAL queries, exact kNN.",
        "",
        markdown.table([[h["epoch"], *((f"{h['loss']:.4f}", f"{h['infonce']:.4f}", f"{h['circle']:.4f}") if "loss" in h else ("(untrained)", "", "")),
                         f"{h['probe_top1']:.3f}", f"{h['probe_top10']:.3f}", f"{h['seconds']:.1f}"] for h in history],
                       ["epoch", "loss", "InfoNCE", "circle", "probe top-1", "probe top-10", "s"], align="r" * 7),
        "",
        "![curves](../plots/align_encoder.png)",
        "",
    ]
    path = root / paths.REPORTS / "align_encoder.md"
    atomic.write_text(path, "\n".join(lines))
