"""Stages ``pretrain -> sft -> dpo``: the generative retriever, aligned stage by stage.

Each stage is ``fn(cfg, root) -> metrics`` (onevision.stages) and writes its own
checkpoint under ``models/generative/<stage>/``, a loss-curve plot
``plots/<stage>.png`` and a short ``reports/<stage>.md``. They read:

* ``data/validated/*.parquet`` and ``data/splits/assignment.parquet``;
* ``models/encoder/`` (the aligned encoder, frozen: images become visual tokens
  + a global embedding once per stage);
* ``data/sids/sid_table.parquet`` (VRQ semantic IDs; ``models/vrq/`` for the
  codebook sizes when the tokenizer is there).

Only TRAIN-split queries and their logs are trained on; every stage ends with a
probe on VAL queries: constrained beam search, HR@10 / MRR of the photographed
item, simulated clicks and orders (UserSimulator, when ``user_tastes`` exists)
and the share of the user's favourite brands in the top 10.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from onevision import atomic, distributed, markdown, paths
from onevision.config import Config
from onevision.data.simulator import UserSimulator
from onevision.data.split import ASSIGNMENT_FILE
from onevision.encoder.api import (
    ENCODER_DIR,
    ITEM_EMBEDDINGS,
    VIEW_EMBEDDINGS,
    ImageEncoder,
    decode_image_column,
    load_item_embeddings,
    load_view_embeddings,
)
from onevision.evaluation.metrics import hit_rate_at_k, hits_at_k, pad_item_lists, reciprocal_rank
from onevision.generative.checkpoint import build_generator, checkpoint_dir, load_checkpoint, save_checkpoint
from onevision.generative.data import (
    anonymous_examples,
    context_rows,
    histories_before,
    interaction_events,
    latest_history,
    personalised_examples,
    preference_pairs,
    target_examples,
)
from onevision.generative.decode import beam_search, catalog_log_probs
from onevision.generative.geosearch import geometric_beam_search
from onevision.generative.leaf_train import (
    build_leaf_examples,
    fit_leaf,
    fit_leaf_dpo,
    list_kl,
    preference_accuracy,
    set_feature_scale,
)
from onevision.generative.model import GeneratorConfig, SIDGenerator
from onevision.generative.train import (
    ContextRows,
    ImageBank,
    SIDExamples,
    evaluate_preferences,
    reference_log_probs,
    token_kl,
    train_dpo,
    train_sid_model,
)
from onevision.generative.trie import SIDTrie, sid_columns
from onevision.plots import pyplot
from onevision.reproducible import deterministic_torch
from onevision.stages import Stage
from onevision.vrq.api import VRQ_DIR, VRQTokenizer, load_sid_table

log = logging.getLogger(__name__)

_GENERATIVE_INPUTS = ("data/validated", "data/splits", "models/encoder", "data/sids")
# evaluate.shown: the VAL probe shows what the evaluation shows
STAGES = (
    Stage("pretrain", "onevision.generative.stage:pretrain",
          reads=("data", "evaluate.shown", "generative.model", "generative.decode", "generative.pretrain"),
          deps=(*_GENERATIVE_INPUTS, "models/vrq", "data/embeddings"), outs=("models/generative/pretrain", "reports/pretrain.md"),
          plots=("plots/pretrain.png",), doc="visual pretraining: query photo -> its item's semantic ID"),
    Stage("sft", "onevision.generative.stage:sft",
          reads=("data", "evaluate.shown", "generative.model", "generative.decode", "generative.sft", "generative.dpo"),
          deps=(*_GENERATIVE_INPUTS, "models/generative/pretrain"), outs=("models/generative/sft", "reports/sft.md"),
          plots=("plots/sft.png",), doc="personalised fine-tuning on what shoppers clicked and ordered"),
    Stage("dpo", "onevision.generative.stage:dpo",
          reads=("data", "evaluate.shown", "generative.model", "generative.decode", "generative.sft", "generative.dpo"),
          deps=(*_GENERATIVE_INPUTS, "models/generative/sft"), outs=("models/generative/dpo", "reports/dpo.md"),
          plots=("plots/dpo.png",), doc="preference alignment: ordered over shown-but-skipped"),
    # before evaluate: evaluate reports the pruned model (models/pruning) beside the unpruned one
    Stage("calibrate_pruning", "onevision.generative.calibrate:calibrate_pruning",
          reads=("data", "evaluate", "generative.decode", "pruning"), deps=(*_GENERATIVE_INPUTS, "models/generative/dpo"),
          outs=("models/pruning", "reports/pruning.md", "metrics/pruning.json"), plots=("plots/pruning_pareto.png",),
          artifacts=("metrics/pruning.json", "reports/pruning.md", "models/pruning/pruning.json"),
          doc="choose the dynamic-pruning point within the allowed quality loss"),
)

PROBE_K = 10
LEARNED_MIN_GAIN = 0.005  # VAL beam recall a learned-term weight must add over geometry alone to be kept


# --------------------------------------------------------------------------- inputs


def load_sids(root: Path) -> tuple[pd.DataFrame, tuple[int, ...]]:
    """The SID table and per-level codebook sizes: the tokenizer's for its levels (when saved),
    max code + 1 for the disambiguation level (and wherever the tokenizer is absent)."""

    table = load_sid_table(root)
    cols = sid_columns(table)
    sizes = [int(table[c].max()) + 1 for c in cols]
    if (Path(root) / VRQ_DIR).exists():
        declared = [int(v) for v in VRQTokenizer.load(Path(root) / VRQ_DIR).codebook_sizes]
        for level, size in enumerate(declared[: len(sizes)]):
            sizes[level] = max(sizes[level], size)
    return table, tuple(sizes)


@dataclass
class QuerySet:
    """Queries of one split with their model contexts."""

    frame: pd.DataFrame  # query_id, user_id, item_id, ts (+ image columns dropped after encoding)
    rows: ContextRows

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class GenerativeData:
    """Everything the generative stages read, encoded once."""

    trie: SIDTrie
    bank: ImageBank
    user_ids: np.ndarray  # sorted; model row = index + 1
    views: pd.DataFrame  # item_id, bank_row
    train: QuerySet
    val: QuerySet
    events: pd.DataFrame  # TRAIN-split events (interaction_events)
    impressions: pd.DataFrame
    items: pd.DataFrame
    user_tastes: pd.DataFrame | None
    token_dim: int
    n_visual_tokens: int
    embed_dim: int
    val_clicked: np.ndarray | None = None  # (Qv, R) item ids the VAL shoppers clicked in the log, -1 padded
    val_ordered: np.ndarray | None = None  # (Qv, R') ordered


def _encode_images(encoder, frames: list[pd.DataFrame], cfg: Config, with_embedding: bool) -> tuple[ImageBank, list[np.ndarray]]:
    """Decode + encode the images of several frames into one bank (float16); returns each frame's bank rows."""

    visual, image, rows, start = [], [], [], 0
    for frame in frames:
        pixels = decode_image_column(frame, cfg.data.import_dir, cfg.data.image_channels)
        visual.append(torch.from_numpy(encoder.visual_tokens(pixels)).half())  # (n, T, D)
        if with_embedding:
            image.append(torch.from_numpy(encoder.embed(pixels)).half())  # (n, E)
        rows.append(np.arange(start, start + len(frame)))
        start += len(frame)
    return ImageBank(torch.cat(visual), torch.cat(image) if with_embedding else None), rows


def load_generative_data(cfg: Config, root: Path, *, catalog_views: bool) -> GenerativeData:
    """Read tables, split, SIDs and encoder; encode the images the stage needs; build user histories."""

    t0 = time.perf_counter()
    root = Path(root)
    g = cfg.generative
    validated = root / paths.VALIDATED
    sid_table, sizes = load_sids(root)
    trie = SIDTrie.from_sid_table(sid_table, sizes)
    items = pd.read_parquet(validated / "items.parquet")
    users = pd.read_parquet(validated / "users.parquet", columns=["user_id"])
    tastes_path = validated / "user_tastes.parquet"
    user_tastes = pd.read_parquet(tastes_path) if tastes_path.exists() else None
    queries = pd.read_parquet(validated / "queries.parquet")
    assignment = pd.read_parquet(root / paths.SPLITS / ASSIGNMENT_FILE, columns=["query_id", "split"])
    queries = queries.merge(assignment, on="query_id", how="inner", validate="one_to_one").sort_values("query_id", kind="stable")
    queries = queries[queries["item_id"].isin(sid_table["item_id"])]
    train_q = queries[queries["split"] == "train"].reset_index(drop=True)
    val_q = queries[queries["split"] == "val"].reset_index(drop=True)
    if g.decode.probe_queries and len(val_q) > g.decode.probe_queries:
        val_q = val_q.sample(g.decode.probe_queries, random_state=cfg.seed).sort_values("query_id", kind="stable").reset_index(drop=True)
    views = pd.read_parquet(validated / "views.parquet") if catalog_views else pd.DataFrame(columns=["item_id", "image", "image_path"])
    views = views[views["item_id"].isin(sid_table["item_id"])].reset_index(drop=True)

    encoder = ImageEncoder.load(root / ENCODER_DIR)
    use_emb = g.model.use_image_embedding
    bank, (view_rows, train_rows, val_rows) = _encode_images(encoder, [views, train_q, val_q], cfg, use_emb)
    log.info("encoded %d images (%d views, %d train, %d val queries) in %.1f s", len(bank), len(views), len(train_q), len(val_q), time.perf_counter() - t0)

    interactions = pd.read_parquet(validated / "interactions.parquet")
    events = interaction_events(interactions, train_q)  # TRAIN behaviour only
    user_ids = np.sort(users["user_id"].to_numpy(np.int64))

    def query_set(frame: pd.DataFrame, bank_rows: np.ndarray) -> QuerySet:
        u = frame["user_id"].to_numpy(np.int64)
        pos = np.clip(np.searchsorted(user_ids, u), 0, max(len(user_ids) - 1, 0))
        user_rows = np.where(user_ids[pos] == u, pos + 1, 0) if len(user_ids) else np.zeros(len(u), np.int64)
        hist_items, hist_actions = histories_before(events, u, frame["ts"].astype("int64").to_numpy(), g.model.history_len)
        rows = context_rows(bank_rows, user_rows, hist_items, hist_actions, trie)
        return QuerySet(frame.drop(columns=[c for c in ("image", "image_path") if c in frame.columns]), rows)

    impressions = pd.read_parquet(validated / "impressions.parquet")
    return GenerativeData(
        trie=trie,
        bank=bank,
        user_ids=user_ids,
        views=pd.DataFrame({"item_id": views["item_id"].to_numpy(np.int64), "bank_row": view_rows}),
        train=query_set(train_q, train_rows),
        val=query_set(val_q, val_rows),
        events=events,
        impressions=impressions[impressions["query_id"].isin(train_q["query_id"]) | impressions["query_id"].isin(val_q["query_id"])],
        items=items,
        user_tastes=user_tastes,
        token_dim=encoder.token_dim,
        n_visual_tokens=encoder.num_tokens,
        embed_dim=encoder.dim if use_emb else 0,
        val_clicked=_logged_items(interactions, val_q["query_id"].to_numpy(np.int64), "click"),
        val_ordered=_logged_items(interactions, val_q["query_id"].to_numpy(np.int64), "order"),
    )


def _logged_items(interactions: pd.DataFrame, query_ids: np.ndarray, action: str) -> np.ndarray:
    """(Q, R) item ids with ``action`` in each query's logged session, -1 padded (R >= 1)."""
    acts = interactions.loc[interactions["action"].astype(str) == action, ["query_id", "item_id"]].drop_duplicates()
    grouped = acts.groupby("query_id")["item_id"].apply(list)

    return pad_item_lists([grouped.get(q, []) for q in query_ids])


# --------------------------------------------------------------------------- probe


def favorite_brand_share(ranked: np.ndarray, user_ids: np.ndarray, items: pd.DataFrame, user_tastes: pd.DataFrame) -> float:
    """Mean share of the top-K items whose brand is one of the user's favourites (empty slots count as misses)."""
    brand = dict(zip(items["item_id"].to_numpy(), items["brand"].astype(str), strict=True))
    favs = {int(u): set(f) for u, f in zip(user_tastes["user_id"], user_tastes["favorite_brands"], strict=True)}
    shares = [np.mean([brand.get(int(i)) in favs.get(int(u), set()) for i in row]) for u, row in zip(user_ids, ranked, strict=True)]
    return float(np.mean(shares)) if shares else 0.0


def generate(model: SIDGenerator, bank: ImageBank, *, rows: ContextRows, trie: SIDTrie, k: int, beam_width: int, batch_size: int) -> tuple[np.ndarray, float]:
    """Constrained beam search over all ``rows`` in batches -> (item_ids (Q, k), invalid-SID rate)."""
    ids, invalid, generated = [], 0.0, 0
    for start in range(0, len(rows), batch_size):
        idx = torch.arange(start, min(len(rows), start + batch_size))
        res = beam_search(model, rows.context(bank, idx), trie=trie, beam_width=beam_width, k=k)
        ids.append(res.item_ids.numpy())
        n = int(torch.isfinite(res.scores).sum())
        invalid, generated = invalid + res.invalid_rate * n, generated + n
    return np.concatenate(ids), invalid / max(generated, 1)


def probe(model: SIDGenerator, data: GenerativeData, cfg: Config, *, anonymous: bool = False) -> dict[str, float]:
    """VAL-query probe: exact-item HR@10 / MRR, simulated clicks and orders (with a simulator) and logged
    clicks and orders the list contains (with a search log) for the list the evaluation shows
    (``evaluate.shown``, default ``data.impressions_per_query``), favourite-brand share, decode time.

    ``anonymous``: without user and history (the pretrain model's only context; for the others, the
    personalisation gain is the difference to the personalised probe).
    """

    val = data.val
    if not len(val):
        return {}
    rows = val.rows
    if anonymous:
        rows = ContextRows.anonymous(rows.image_idx, rows.history.shape[1], data.trie.n_levels)
    shown = max(PROBE_K, cfg.evaluate.shown or cfg.data.impressions_per_query)  # the simulator sees what the evaluation shows
    t0 = time.perf_counter()
    ranked, invalid = generate(model, data.bank, rows=rows, trie=data.trie, k=shown, beam_width=cfg.generative.decode.beam_width, batch_size=cfg.generative.decode.batch_size)
    seconds = time.perf_counter() - t0
    target = val.frame["item_id"].to_numpy(np.int64)
    users = val.frame["user_id"].to_numpy(np.int64)
    out = {
        "hr_at_10": float(hit_rate_at_k(ranked, target, PROBE_K).mean()),
        "mrr_at_10": float(reciprocal_rank(ranked, target, PROBE_K).mean()),
        "invalid_sid_rate": invalid,
        "decode_ms_per_query": 1000 * seconds / len(val),
        "n_queries": len(val),
    }
    if data.user_tastes is not None:
        sim = UserSimulator.from_tables(data.items, data.user_tastes, seed=cfg.seed)
        score = sim.score(users, target, ranked)
        out["sim_clicks_per_query"] = score["clicks_per_query"]
        out["sim_orders_per_query"] = score["orders_per_query"]
        out["favorite_brand_share_at_10"] = favorite_brand_share(ranked[:, :PROBE_K], users, data.items, data.user_tastes)
    # Replay of the search log: logged clicks / orders whose item is in the list shown (both worlds).
    for name, logged in (("clicks", data.val_clicked), ("orders", data.val_ordered)):
        if logged is not None and (logged >= 0).any():
            out[f"logged_{name}_per_query"] = float(hits_at_k(ranked, logged, shown).mean())
    return out


def selection_key(p: dict[str, float]) -> str:
    """The VAL probe metric that ranks epochs: simulated orders with a simulator, else the logged orders the
    list would show (an imported catalog with an order log), else exact-item HR@10."""
    for key in ("sim_orders_per_query", "logged_orders_per_query"):
        if key in p:
            return key
    return "hr_at_10"


SELECTION_NAMES = {
    "sim_orders_per_query": "VAL simulated orders/query",
    "logged_orders_per_query": "VAL logged orders shown/query",
    "hr_at_10": "VAL HR@10",
}


class BestEpoch:
    """Early stopping by the business metric: keep the epoch with the most orders on VAL.

    Orders are the simulator's where one exists, else the logged orders the
    shown list contains (:func:`selection_key`; exact-item HR@10 when there is
    no order log). Epoch 0 is the stage's starting checkpoint (pretrain for SFT,
    SFT for DPO), so a fine-tuning stage that does not raise VAL orders ships
    its input unchanged instead of a worse model; the metrics say which epoch
    was kept and by what. Used as the training loop's ``on_epoch`` callback;
    each call adds the VAL probe's HR@10 and the selection metric to that
    epoch's record (and so to the curves).
    """

    def __init__(self, model: SIDGenerator, data: GenerativeData, cfg: Config, enabled: bool = True, served_anonymously: bool = False):
        self.model, self.data, self.cfg, self.enabled = model, data, cfg, enabled
        first = probe(model, data, cfg)
        self.key = selection_key(first)
        self.start = self._score(first)
        # The pretrain checkpoint knows no users and serves everyone anonymously: what SFT must beat is that,
        # not the same weights fed user contexts they were never trained on. Reported, not used to select.
        self.start_served = probe(model, data, cfg, anonymous=True).get(self.key) if served_anonymously else None
        self.best_epoch, self.best_score = 0, self.start[self.key]
        self.best_state = copy.deepcopy(model.state_dict()) if enabled else None

    def _score(self, p: dict[str, float] | None = None) -> dict[str, float]:
        p = probe(self.model, self.data, self.cfg) if p is None else p
        return {self.key: p.get(self.key, 0.0), "hr_at_10": p.get("hr_at_10", 0.0)}

    def __call__(self, epoch: int, record: dict) -> None:
        score = self._score()
        record[f"val_{self.key}"], record["val_hr_at_10"] = score[self.key], score["hr_at_10"]
        if self.enabled and score[self.key] > self.best_score:
            self.best_epoch, self.best_score = epoch, score[self.key]
            self.best_state = copy.deepcopy(self.model.state_dict())

    def restore(self) -> dict[str, Any]:
        """Load the kept weights; returns what to report."""
        name = SELECTION_NAMES[self.key]
        if self.enabled and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            log.info("keeping epoch %d (%s %.4f; start %.4f)", self.best_epoch, name, self.best_score, self.start[self.key])
        out = {"kept_epoch": self.best_epoch if self.enabled else -1, "selection_metric": self.key,
               f"val_{self.key}_start": round(self.start[self.key], 5), f"val_{self.key}_kept": round(self.best_score, 5)}
        if self.start_served is not None:
            out[f"val_{self.key}_input_as_served"] = round(self.start_served, 5)
            if self.best_score <= self.start_served:
                log.warning("kept epoch %d does not beat its input as served (%s %.4f <= %.4f anonymous)",
                            self.best_epoch, name, self.best_score, self.start_served)
        return out


# --------------------------------------------------------------------------- outputs


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
    lines += [part for name in ("probe", "probe_anonymous", "val") if name in metrics
              for part in ("", f"## {name}", "", metric_table(metrics[name]))]
    atomic.write_text(path, "\n".join(lines) + "\n")


def _setup(cfg: Config, stage: str) -> None:
    deterministic_torch()
    if cfg.generative.threads:  # the cores are shared by the data-parallel processes
        torch.set_num_threads(max(1, cfg.generative.threads // distributed.world().size))
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, sum(map(ord, stage))]).generate_state(1)[0]))


def _finish(root: Path, stage: str, *, cfg: Config, model: SIDGenerator, data: GenerativeData, history: list[dict], metrics: dict, user_history: pd.DataFrame | None, curve_keys: list[str]) -> dict:
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


# --------------------------------------------------------------------------- stages


def build_model(cfg: Config, data: GenerativeData, root: Path | None = None) -> SIDGenerator:
    """A fresh generator for ``data``; geometric (VRQ codebooks + leaf head over the item store) when
    ``generative.model.geometry`` is on and ``root`` has the tokenizer and the item embeddings."""

    m = cfg.generative.model
    geo: dict[str, Any] = {}
    tok = emb = views = None
    if m.geometry and root is not None and data.embed_dim and (Path(root) / VRQ_DIR).exists() and (Path(root) / ITEM_EMBEDDINGS).exists():
        tok = VRQTokenizer.load(Path(root) / VRQ_DIR)
        if tok.dim == data.embed_dim and tok.num_levels < data.trie.n_levels:
            emb = load_item_embeddings(root)
            if (Path(root) / VIEW_EMBEDDINGS).exists():
                v = load_view_embeddings(root)
                views = (v["item_ids"][v["kind"] == 0], v["embeddings"][v["kind"] == 0])
            n_views = int(np.unique(views[0], return_counts=True)[1].max()) if views is not None and len(views[0]) else 1
            geo = {"leaf_views": n_views, "geo_levels": tok.num_levels, "geo_dim": tok.dim, "leaf_items": len(emb[0]), "leaf_hidden": m.leaf_hidden,
                   "leaf_categories": int(data.items["category"].max()) + 1, "leaf_brands": int(data.items["brand"].nunique())}
    model = build_generator(
        GeneratorConfig(
            codebook_sizes=data.trie.codebook_sizes,
            token_dim=data.token_dim,
            n_visual_tokens=data.n_visual_tokens,
            visual_grid=m.visual_grid,
            embed_dim=data.embed_dim,
            n_users=len(data.user_ids),
            history_len=m.history_len,
            d_model=m.d_model,
            n_heads=m.n_heads,
            n_enc_layers=m.n_enc_layers,
            n_dec_layers=m.n_dec_layers,
            mlp_ratio=m.mlp_ratio,
            dropout=m.dropout,
            **geo,
        )
    )
    if geo:
        model.set_codebooks(tok.codebooks)
        train_imp = data.impressions[data.impressions["query_id"].isin(data.train.frame["query_id"])]
        model.leaf.fill(data.items, emb[0], emb[1], train_imp, data.events)
        if views is not None:
            model.leaf.fill_views(*views)
    return model


def _user_rows(data: GenerativeData, user_ids: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(data.user_ids, user_ids), 0, max(len(data.user_ids) - 1, 0))
    return np.where(data.user_ids[pos] == user_ids, pos + 1, 0)


def choose_learned_weight(model: SIDGenerator, data: GenerativeData, cfg: Config) -> dict[str, Any]:
    """Pick the learned term's weight with the best VAL recall of the beam (anonymous); a non-zero weight must beat
    geometry alone by ``LEARNED_MIN_GAIN`` (it costs a decoder pass per level), ties go to the smaller weight."""
    W = cfg.generative.decode.beam_width
    val = data.val
    rows = ContextRows.anonymous(val.rows.image_idx, val.rows.history.shape[1], data.trie.n_levels)
    target = val.frame["item_id"].to_numpy(np.int64)
    recall = {}
    for lam in cfg.generative.decode.learned_weights:
        hits = []
        for start in range(0, len(rows), cfg.generative.decode.batch_size):
            idx = torch.arange(start, min(len(rows), start + cfg.generative.decode.batch_size))
            res = geometric_beam_search(model, rows.context(data.bank, idx), trie=data.trie, beam_width=W, k=W, learned_weight=lam, use_leaf=False)
            hits.append((res.item_ids.numpy() == target[idx.numpy(), None]).any(1))
        recall[float(lam)] = float(np.concatenate(hits).mean()) if hits else 0.0
    # a non-zero weight runs the decoder at every level (slower decoding): it must buy a real recall gain
    base = recall.get(0.0, -1.0)
    worth = [lam for lam in recall if lam == 0.0 or recall[lam] >= base + LEARNED_MIN_GAIN]
    best = max(worth, key=lambda lam: (recall[lam], -lam))
    model.learned_weight.fill_(best)
    log.info("learned-term weight %.2f (VAL recall@%d of the beam by weight: %s)", best, W, recall)
    return {"learned_weight": best, "val_beam_recall": {f"w{lam:g}": round(r, 5) for lam, r in recall.items()}}


def leaf_lists(model: SIDGenerator, data: GenerativeData, *, cfg: Config, qs: QuerySet, events: pd.DataFrame | None, personal: bool,
               exclude_own: bool = False, anonymize_prob: float = 0.0, seed: int = 0):
    """The leaf head's training lists for a query set: the beam's items + the photographed item (+ the logged
    impressions, their clicks/orders with ``generative.sft``'s weights and ``generative.dpo``'s pairs when
    ``personal``; pretraining reads neither section)."""
    common = dict(beam_width=cfg.generative.decode.beam_width, seed=seed)
    if not personal:
        return build_leaf_examples(model, data.bank, rows=qs.rows, frame=qs.frame, trie=data.trie, impressions=None, events=None, exact_weight=1.0,
                                   click_weight=0.0, order_weight=0.0, anonymous=True, pair_types=(), **common)
    s, d = cfg.generative.sft, cfg.generative.dpo
    imp = data.impressions[data.impressions["query_id"].isin(qs.frame["query_id"])]
    return build_leaf_examples(
        model, data.bank, rows=qs.rows, frame=qs.frame, trie=data.trie, impressions=imp, events=events, exact_weight=s.replay_weight,
        click_weight=s.click_weight, order_weight=s.order_weight, skip_positions=d.skip_positions, exclude_own=exclude_own,
        anonymize_prob=anonymize_prob, pair_types=tuple(d.pairs), **common,
    )


def pretrain(cfg: Config, root: Path) -> dict[str, Any]:
    """Visual prior: catalog view -> its item's SID and TRAIN query photo -> its item's SID (anonymous context)."""
    t0 = time.perf_counter()
    _setup(cfg, "pretrain")
    p, H = cfg.generative.pretrain, cfg.generative.model.history_len
    data = load_generative_data(cfg, root, catalog_views=p.catalog_views)
    parts = []
    if p.catalog_views:
        parts.append(anonymous_examples(data.views["bank_row"].to_numpy(), data.views["item_id"].to_numpy(), data.trie, H))
    if p.train_queries:
        parts.append(anonymous_examples(data.train.rows.image_idx.numpy(), data.train.frame["item_id"].to_numpy(), data.trie, H))
    if not parts:
        raise ValueError("generative.pretrain needs catalog_views or train_queries (both are off)")
    examples = SIDExamples.concat(parts)
    val = anonymous_examples(data.val.rows.image_idx.numpy(), data.val.frame["item_id"].to_numpy(), data.trie, H)
    model = build_model(cfg, data, root)
    t1 = time.perf_counter()
    history = train_sid_model(model, data.bank, examples=examples, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay, seed=cfg.seed, val=val)
    geo: dict[str, Any] = {}
    if model.cfg.geo_levels:
        geo = choose_learned_weight(model, data, cfg)
        t2 = time.perf_counter()
        lists = leaf_lists(model, data, cfg=cfg, qs=data.train, events=None, personal=False)
        set_feature_scale(model.leaf, lists)
        leaf_history = fit_leaf(model.leaf, lists, epochs=p.leaf_epochs, lr=p.leaf_lr, seed=cfg.seed, val=leaf_lists(model, data, cfg=cfg, qs=data.val, events=None, personal=False))
        geo["leaf_seconds"] = round(time.perf_counter() - t2, 2)
        if leaf_history:
            geo["leaf_loss"] = round(leaf_history[-1]["loss"], 5)
            geo["leaf_val_loss"] = round(leaf_history[-1].get("val_loss", float("nan")), 5)
    metrics = {
        **geo,
        "n_examples": len(examples),
        "n_parameters": model.num_parameters(),
        "sid_levels": data.trie.n_levels,
        "train_loss": round(history[-1]["loss"], 5),
        "val_loss": round(history[-1].get("val_loss", float("nan")), 5),
        "history": by_epoch(history),
        "train_seconds": round(time.perf_counter() - t1, 2),
    }
    metrics = _finish(root, "pretrain", cfg=cfg, model=model, data=data, history=history, metrics=metrics, user_history=None, curve_keys=["loss", "val_loss"])
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics


def sft(cfg: Config, root: Path) -> dict[str, Any]:
    """Personalised SFT on TRAIN logs: (query, user, history) -> clicked/ordered SIDs; visual-prior replay."""
    t0 = time.perf_counter()
    _setup(cfg, "sft")
    s, H = cfg.generative.sft, cfg.generative.model.history_len
    data = load_generative_data(cfg, root, catalog_views=False)
    model = load_checkpoint(checkpoint_dir(root, "pretrain")).model
    if model.cfg.n_users != len(data.user_ids):
        raise ValueError(f"pretrain checkpoint has {model.cfg.n_users} user rows, the users table {len(data.user_ids)}: rerun pretrain")
    if model.cfg.geo_levels:
        return _sft_leaf(cfg, root, data, model, t0)
    train_ids, val_ids = data.train.frame["query_id"].to_numpy(), data.val.frame["query_id"].to_numpy()
    parts = [personalised_examples(data.train.rows, train_ids, events=data.events, trie=data.trie, click_weight=s.click_weight, order_weight=s.order_weight)]
    if s.replay_weight > 0:  # the photographed item, now with its user's context
        parts.append(target_examples(data.train.rows, data.train.frame["item_id"].to_numpy(), data.trie, s.replay_weight))
    examples = SIDExamples.concat(parts)
    val_events = interaction_events(pd.read_parquet(Path(root) / paths.VALIDATED / "interactions.parquet"), data.val.frame)
    val = personalised_examples(data.val.rows, val_ids, events=val_events, trie=data.trie, click_weight=s.click_weight, order_weight=s.order_weight)
    t1 = time.perf_counter()
    keeper = BestEpoch(model, data, cfg, s.keep_best_epoch, served_anonymously=True)
    history = train_sid_model(
        model, data.bank, examples=examples, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
        anonymize_prob=s.anonymize_prob, seed=cfg.seed, val=val, on_epoch=keeper,
    )
    kept = keeper.restore()
    metrics = {
        **kept,
        "n_examples": len(examples),
        "n_logged_examples": len(parts[0]),
        "train_loss": round(history[-1]["loss"], 5),
        "val_loss": round(history[-1].get("val_loss", float("nan")), 5),
        "history": by_epoch(history),
        "train_seconds": round(time.perf_counter() - t1, 2),
    }
    metrics = _finish(root, "sft", cfg=cfg, model=model, data=data, history=history, metrics=metrics, user_history=latest_history(data.events, H), curve_keys=["loss", "val_loss"])
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics


def _fill_users(model: SIDGenerator, data: GenerativeData) -> None:
    ev = data.events
    model.leaf.fill_users(_user_rows(data, ev["user_id"].to_numpy(np.int64)), ev["item_id"].to_numpy(np.int64), ev["action"].to_numpy(np.int64))


def _val_events(root: Path, data: GenerativeData) -> pd.DataFrame:
    return interaction_events(pd.read_parquet(Path(root) / paths.VALIDATED / "interactions.parquet"), data.val.frame)


def _sft_leaf(cfg: Config, root: Path, data: GenerativeData, model: SIDGenerator, t0: float) -> dict[str, Any]:
    """Geometric SFT: the user representation from the TRAIN logs, then the leaf head's position-debiased
    listwise loss over the logged impressions + the beam's items (the decoder stays as pretrained)."""
    s, H = cfg.generative.sft, cfg.generative.model.history_len
    _fill_users(model, data)
    t1 = time.perf_counter()
    train = leaf_lists(model, data, cfg=cfg, qs=data.train, events=data.events, personal=True, exclude_own=True, anonymize_prob=s.anonymize_prob, seed=cfg.seed)
    val = leaf_lists(model, data, cfg=cfg, qs=data.val, events=_val_events(root, data), personal=True)
    set_feature_scale(model.leaf, train)  # the user features, constant (0) while pretraining
    keeper = BestEpoch(model, data, cfg, s.keep_best_epoch, served_anonymously=True)
    history = fit_leaf(model.leaf, train, epochs=s.leaf_epochs, lr=s.leaf_lr, seed=cfg.seed, val=val, on_epoch=keeper)
    kept = keeper.restore()
    metrics = {
        **kept,
        "n_lists": len(train),
        "n_list_items": int((train.cand >= 0).sum()),
        "train_loss": round(history[-1]["loss"], 5) if history else float("nan"),
        "val_loss": round(history[-1].get("val_loss", float("nan")), 5) if history else float("nan"),
        "history": by_epoch(history),
        "train_seconds": round(time.perf_counter() - t1, 2),
    }
    metrics = _finish(root, "sft", cfg=cfg, model=model, data=data, history=history, metrics=metrics, user_history=latest_history(data.events, H), curve_keys=["loss", "val_loss"])
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics


def _dpo_leaf(cfg: Config, root: Path, data: GenerativeData, ckpt, t0: float) -> dict[str, Any]:
    """Geometric DPO: the leaf head against the frozen SFT head on logged preference pairs over the model's own lists."""
    d = cfg.generative.dpo
    policy = ckpt.model
    reference = copy.deepcopy(policy.leaf).eval()
    train = leaf_lists(policy, data, cfg=cfg, qs=data.train, events=data.events, personal=True, exclude_own=True, seed=cfg.seed)
    val = leaf_lists(policy, data, cfg=cfg, qs=data.val, events=_val_events(root, data), personal=True)
    if not len(train.pairs):
        raise ValueError("no preference pairs in the TRAIN logs; check generative.dpo.pairs and the interactions table")
    t1 = time.perf_counter()
    keeper = BestEpoch(policy, data, cfg, d.keep_best_epoch)
    history = train_history = fit_leaf_dpo(
        policy.leaf, reference, train=train, beta=d.beta, epochs=d.epochs, lr=d.lr, sft_weight=d.sft_weight, batch_size=d.batch_size,
        seed=cfg.seed, val=val, on_epoch=keeper,
    )
    kept = keeper.restore()
    val_metrics = {"preference_accuracy": preference_accuracy(policy.leaf, val), "reference_preference_accuracy": preference_accuracy(reference, val),
                   "list_kl_to_reference": list_kl(policy.leaf, reference, val)}
    metrics = {
        **kept,
        "n_pairs": len(train.pairs),
        "n_val_pairs": len(val.pairs),
        "beta": d.beta,
        "train_loss": round(train_history[-1]["loss"], 5),
        "train_preference_accuracy": round(train_history[-1]["preference_accuracy"], 5),
        "preference_accuracy": round(val_metrics["preference_accuracy"], 5),
        "catalog_kl_to_reference": round(val_metrics["list_kl_to_reference"], 5),
        "history": by_epoch(history),
        "train_seconds": round(time.perf_counter() - t1, 2),
        "val": val_metrics,
    }
    keys = ["loss", "preference_accuracy", "val_preference_accuracy"]
    metrics = _finish(root, "dpo", cfg=cfg, model=policy, data=data, history=history, metrics=metrics, user_history=ckpt.user_history, curve_keys=keys)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics


def catalog_kl(policy: SIDGenerator, reference: SIDGenerator, data: GenerativeData, n_queries: int) -> float:
    """Exact KL(pi || pi_ref) over the catalog (both renormalised over existing SIDs) on VAL contexts."""
    n = min(n_queries, len(data.val))
    if n == 0:
        return float("nan")
    ctx = data.val.rows.context(data.bank, torch.arange(n))
    lp = torch.log_softmax(catalog_log_probs(policy, ctx, data.trie.sids), dim=1)  # (n, N)
    lr = torch.log_softmax(catalog_log_probs(reference, ctx, data.trie.sids), dim=1)
    return float((lp.exp() * (lp - lr)).sum(1).mean())


def dpo(cfg: Config, root: Path) -> dict[str, Any]:
    """DPO on TRAIN log preferences (ordered > clicked > skipped) against the frozen SFT model."""
    t0 = time.perf_counter()
    _setup(cfg, "dpo")
    d = cfg.generative.dpo
    data = load_generative_data(cfg, root, catalog_views=False)
    ckpt = load_checkpoint(checkpoint_dir(root, "sft"))
    if ckpt.model.cfg.geo_levels:
        return _dpo_leaf(cfg, root, data, ckpt, t0)
    policy, reference = ckpt.model, load_checkpoint(checkpoint_dir(root, "sft")).model
    interactions = pd.read_parquet(Path(root) / paths.VALIDATED / "interactions.parquet")
    val_events = interaction_events(interactions, data.val.frame)

    def pairs_of(qs: QuerySet, events: pd.DataFrame, seed: int):
        return preference_pairs(
            qs.rows, qs.frame["query_id"].to_numpy(), impressions=data.impressions, events=events, trie=data.trie,
            pair_types=d.pairs, skip_positions=d.skip_positions, max_pairs_per_query=d.max_pairs_per_query, seed=seed,
        )

    train_pairs, val_pairs = pairs_of(data.train, data.events, cfg.seed), pairs_of(data.val, val_events, cfg.seed + 1)
    if not len(train_pairs):
        raise ValueError("no preference pairs in the TRAIN logs; check generative.dpo.pairs and the interactions table")
    t1 = time.perf_counter()
    keeper = BestEpoch(policy, data, cfg, d.keep_best_epoch)
    history = train_dpo(
        policy, reference, bank=data.bank, pairs=train_pairs, beta=d.beta, epochs=d.epochs, batch_size=d.batch_size, lr=d.lr,
        sft_weight=d.sft_weight, seed=cfg.seed, val=val_pairs, on_epoch=keeper,
    )
    kept = keeper.restore()
    train_seconds = time.perf_counter() - t1
    val_metrics: dict[str, float] = {}
    if len(val_pairs):
        ref_val = reference_log_probs(reference, data.bank, val_pairs)
        val_metrics = evaluate_preferences(policy, data.bank, pairs=val_pairs, ref_logps=ref_val, beta=d.beta)
        val_metrics["token_kl_to_reference"] = token_kl(policy, reference, bank=data.bank, rows=val_pairs.rows, sids=val_pairs.chosen)
    kl_queries = max(4, min(64, 200_000 // data.trie.n_items))
    metrics = {
        **kept,
        "n_pairs": len(train_pairs),
        "n_val_pairs": len(val_pairs),
        "beta": d.beta,
        "train_loss": round(history[-1]["loss"], 5),
        "train_preference_accuracy": round(history[-1]["preference_accuracy"], 5),
        "preference_accuracy": round(val_metrics.get("preference_accuracy", float("nan")), 5),
        "catalog_kl_to_reference": round(catalog_kl(policy, reference, data, kl_queries), 5),
        "history": by_epoch(history),
        "train_seconds": round(train_seconds, 2),
        "val": val_metrics,
    }
    keys = ["loss", "val_loss", "preference_accuracy", "val_preference_accuracy"]
    metrics = _finish(root, "dpo", cfg=cfg, model=policy, data=data, history=history, metrics=metrics, user_history=ckpt.user_history, curve_keys=keys)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics
