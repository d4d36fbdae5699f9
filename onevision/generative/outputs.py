"""What a generative stage leaves behind: the checkpoint, its curves (``plots/<stage>.png``, and per-epoch
metrics for MLflow and ``dvc metrics show``) and a short ``reports/<stage>.md``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevision import atomic, distributed, markdown, paths
from onevision.config import Config
from onevision.generative.checkpoint import checkpoint_dir, save_checkpoint
from onevision.generative.inputs import GenerativeData
from onevision.generative.model import SIDGenerator
from onevision.generative.probe import probe
from onevision.plots import pyplot

log = logging.getLogger(__name__)


def plot_curves(history: list[dict], keys: list[str], path: Path, title: str) -> Path:
    plt = pyplot()

    epochs = [h["epoch"] for h in history]
    panels = [[k for k in keys if k in history[0] and "accuracy" not in k], [k for k in keys if k in history[0] and "accuracy" in k]]
    panels = [p for p in panels if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for key in panel:
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def by_epoch(history: list[dict]) -> dict[str, dict[str, float]]:
    """Per-epoch curves as ``{"e01": {"loss": v, ...}, ...}``: the flow logs ``history.eNN.KEY`` as
    MLflow metric curve.KEY at step NN (onevision.tracking), and ``dvc metrics show`` lists them."""
    return {f"e{h['epoch']:02d}": {k: round(float(v), 5) for k, v in h.items() if k != "epoch" and isinstance(v, (int, float))} for h in history}


def write_report(root: Path, stage: str, metrics: dict[str, Any]) -> None:
    path = Path(root) / paths.REPORTS / f"{stage}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}

    def metric_table(values: dict[str, Any]) -> str:
        rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in sorted(values.items())]
        return markdown.table(rows, ["metric", "value"], align="lr")

    lines = [f"# Stage `{stage}`", "", metric_table(flat)]
    lines += [part for name in ("probe", "probe_anonymous", "val", "decoder") if name in metrics
              for part in ("", f"## {name}", "", metric_table(metrics[name]))]
    by_weight = metrics.get("val_by_decoder_weight")
    if by_weight:  # the tied decoder's weight, chosen on VAL after the leaf head (choose_decoder_weight)
        cols = list(next(iter(by_weight.values())))
        rows = [[w[1:], *(f"{v[c]:.4g}" for c in cols)] for w, v in by_weight.items()]
        lines += ["", "## decoder weight (VAL, anonymous, after the leaf head)", "",
                  f"Kept: {metrics.get('learned_weight')} (the most VAL orders; 0 = no decoder pass, 1 = the decoder alone).", "",
                  markdown.table(rows, ["weight", *cols], align="r" * (len(cols) + 1))]
    by_shopper = metrics.get("val_by_shopper_weight")
    if by_shopper:  # the shopper's prefix term in the beam, chosen on VAL after SFT (choose_shopper_weight)
        cols = list(next(iter(by_shopper.values())))
        rows = [[w[1:], *(f"{v[c]:.4g}" for c in cols)] for w, v in by_shopper.items()]
        lines += ["", "## shopper weight (VAL, personalised, after the leaf head)", "",
                  f"Kept: {metrics.get('shopper_weight')} (the most VAL orders; 0 = the same beam for every shopper). "
                  "beam_other_recall: share of the other items VAL shoppers clicked or ordered that the beam holds.", "",
                  markdown.table(rows, ["weight", *cols], align="r" * (len(cols) + 1))]
    atomic.write_text(path, "\n".join(lines) + "\n")


def finish_stage(root: Path, stage: str, *, cfg: Config, model: SIDGenerator, data: GenerativeData, history: list[dict], metrics: dict, user_history: pd.DataFrame | None, curve_keys: list[str]) -> dict:
    """Probe on VAL, save the checkpoint, plot the curves, write the report.

    ``user_history`` None (pretrain): the model has seen no user context, so the checkpoint knows no
    users and serves everyone anonymously; otherwise the probe runs both personalised and anonymous.
    """
    if not distributed.world().is_main:  # rank 0 writes the outputs of a data-parallel run
        return metrics
    personalised = user_history is not None
    metrics["probe"] = probe(model, data, cfg, anonymous=not personalised)
    if personalised:
        metrics["probe_anonymous"] = probe(model, data, cfg, anonymous=True)
    user_ids = data.user_ids if personalised else np.zeros(0, np.int64)
    facts = {"stage": stage, **{k: v for k, v in metrics.items() if not isinstance(v, dict)}}
    save_checkpoint(checkpoint_dir(root, stage), model, user_ids, user_history, facts=facts)
    plot_curves(history, curve_keys, Path(root) / paths.PLOTS / f"{stage}.png", f"generative {stage}")
    write_report(root, stage, metrics)
    log.info("%s: %s", stage, json.dumps(metrics["probe"]))
    return metrics
