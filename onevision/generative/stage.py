# Long on purpose: the three alignment stages share their inputs and their VAL probe; split next by stage (issue 32).
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
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from onevision import distributed, paths
from onevision.config import Config
from onevision.encoder.api import (
    ITEM_EMBEDDINGS,
    VIEW_EMBEDDINGS,
    load_item_embeddings,
    load_view_embeddings,
)
from onevision.generative.checkpoint import build_generator, checkpoint_dir, load_checkpoint
from onevision.generative.data import (
    anonymous_examples,
    interaction_events,
    latest_history,
    personalised_examples,
    preference_pairs,
    target_examples,
)
from onevision.generative.decode import catalog_log_probs
from onevision.generative.inputs import (
    GenerativeData,
    QuerySet,
    load_generative_data,
    stacking_split,
    user_rows_of,
    val_events,
)
from onevision.generative.leaf_train import (
    build_leaf_examples,
    fit_leaf,
    fit_leaf_dpo,
    list_kl,
    preference_accuracy,
    set_feature_scale,
)
from onevision.generative.model import GeneratorConfig, SIDGenerator
from onevision.generative.outputs import by_epoch, finish_stage
from onevision.generative.probe import (
    BestEpoch,
    choose_decoder_weight,
    choose_learned_weight,
    choose_shopper_weight,
    probe,
    selection_key,
)
from onevision.generative.train import (
    SIDExamples,
    evaluate_preferences,
    reference_log_probs,
    token_kl,
    train_dpo,
    train_sid_model,
)
from onevision.reproducible import deterministic_torch
from onevision.stages import Stage
from onevision.vrq.api import VRQ_DIR, VRQTokenizer

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

def _setup(cfg: Config, stage: str) -> None:
    deterministic_torch()
    if cfg.generative.threads:  # the cores are shared by the data-parallel processes
        torch.set_num_threads(max(1, cfg.generative.threads // distributed.world().size))
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, sum(map(ord, stage))]).generate_state(1)[0]))



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
            geo = {"leaf_views": n_views, "geo_levels": tok.num_levels, "geo_dim": tok.dim, "leaf_items": len(emb[0]), "leaf_hidden": m.leaf_hidden, "tied_head": m.tied_head,
                   "node_geometry": m.node_geometry, "leaf_categories": int(data.items["category"].max()) + 1, "leaf_brands": int(data.items["brand"].nunique())}
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


def _stacking(model: SIDGenerator, data: GenerativeData, cfg: Config) -> tuple[QuerySet, QuerySet]:
    """TRAIN queries for (the decoder, the leaf head): split for a tied decoder (``generative.decoder_share``,
    inputs.stacking_split), all of them for both otherwise."""
    if not model.tied:
        return data.train, data.train
    return stacking_split(data.train, cfg.generative.decoder_share, cfg.seed)


def _fit_pretrain_leaf(model: SIDGenerator, data: GenerativeData, cfg: Config, qs: QuerySet) -> dict[str, float]:
    """Pretraining's leaf head: TRAIN query photos (``qs``) -> the photographed item among the beam's items (anonymous)."""
    p = cfg.generative.pretrain
    lists = leaf_lists(model, data, cfg=cfg, qs=qs, events=None, personal=False)
    set_feature_scale(model.leaf, lists)
    history = fit_leaf(model.leaf, lists, epochs=p.leaf_epochs, lr=p.leaf_lr, seed=cfg.seed, val=leaf_lists(model, data, cfg=cfg, qs=data.val, events=None, personal=False))
    if not history:
        return {}
    return {"leaf_loss": round(history[-1]["loss"], 5), "leaf_val_loss": round(history[-1].get("val_loss", float("nan")), 5)}


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
    model = build_model(cfg, data, root)
    dec_q, leaf_q = _stacking(model, data, cfg)
    parts = []
    if p.catalog_views:
        parts.append(anonymous_examples(data.views["bank_row"].to_numpy(), data.views["item_id"].to_numpy(), data.trie, H))
    if p.train_queries:
        parts.append(anonymous_examples(dec_q.rows.image_idx.numpy(), dec_q.frame["item_id"].to_numpy(), data.trie, H))
    if not parts:
        raise ValueError("generative.pretrain needs catalog_views or train_queries (both are off)")
    examples = SIDExamples.concat(parts)
    val = anonymous_examples(data.val.rows.image_idx.numpy(), data.val.frame["item_id"].to_numpy(), data.trie, H)
    t1 = time.perf_counter()
    trie = data.trie if model.tied else None  # the tied decoder trains with decoding's normalisation (trie children)
    history = train_sid_model(model, data.bank, examples=examples, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                              seed=cfg.seed, val=val, trie=trie)
    geo: dict[str, Any] = {"decoder_seconds": round(time.perf_counter() - t1, 2)}
    if model.tied:
        t2 = time.perf_counter()
        geo.update(choose_decoder_weight(model, data, cfg=cfg, fit=lambda: _fit_pretrain_leaf(model, data, cfg, leaf_q),
                                         refit=lambda: _fit_pretrain_leaf(model, data, cfg, data.train)))
        geo["leaf_seconds"] = round(time.perf_counter() - t2, 2)
    elif model.cfg.geo_levels:
        geo.update(choose_learned_weight(model, data, cfg))
        t2 = time.perf_counter()
        geo.update(_fit_pretrain_leaf(model, data, cfg, leaf_q))
        geo["leaf_seconds"] = round(time.perf_counter() - t2, 2)
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
    metrics = finish_stage(root, "pretrain", cfg=cfg, model=model, data=data, history=history, metrics=metrics, user_history=None, curve_keys=["loss", "val_loss"])
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
    examples, val, n_logged = _sft_examples(cfg, root, data)
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
        "n_logged_examples": n_logged,
        "train_loss": round(history[-1]["loss"], 5),
        "val_loss": round(history[-1].get("val_loss", float("nan")), 5),
        "history": by_epoch(history),
        "train_seconds": round(time.perf_counter() - t1, 2),
    }
    metrics = finish_stage(root, "sft", cfg=cfg, model=model, data=data, history=history, metrics=metrics, user_history=latest_history(data.events, H), curve_keys=["loss", "val_loss"])
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics


def _sft_examples(cfg: Config, root: Path, data: GenerativeData, qs: QuerySet | None = None) -> tuple[SIDExamples, SIDExamples, int]:
    """SFT's decoder examples: (query, user, history) of the TRAIN queries ``qs`` (default: all) -> each clicked /
    ordered item's SID (click / order weights) and the photographed item (``replay_weight``); the VAL examples
    alike; the number of logged TRAIN examples."""
    s = cfg.generative.sft
    qs = data.train if qs is None else qs
    train_ids, val_ids = qs.frame["query_id"].to_numpy(), data.val.frame["query_id"].to_numpy()
    parts = [personalised_examples(qs.rows, train_ids, events=data.events, trie=data.trie, click_weight=s.click_weight, order_weight=s.order_weight)]
    if s.replay_weight > 0:  # the photographed item, now with its user's context
        parts.append(target_examples(qs.rows, qs.frame["item_id"].to_numpy(), data.trie, s.replay_weight))
    val = personalised_examples(data.val.rows, val_ids, events=val_events(root, data), trie=data.trie, click_weight=s.click_weight, order_weight=s.order_weight)
    return SIDExamples.concat(parts), val, len(parts[0])


def _sft_decoder(cfg: Config, root: Path, data: GenerativeData, model: SIDGenerator, qs: QuerySet) -> dict[str, Any]:
    """The tied decoder learns the shopper: user and history tokens, trained on what TRAIN shoppers clicked and
    ordered (and the photographed item), softmax over the trie's children; the epoch with the most VAL orders is
    kept (epoch 0: the pretrained decoder). The leaf head is the pretrained one here, its user store still empty, so
    the probe measures what the personalised beam adds."""
    s = cfg.generative.sft
    examples, val, n_logged = _sft_examples(cfg, root, data, qs)
    t1 = time.perf_counter()
    weight = float(model.learned_weight)
    model.learned_weight.fill_(1.0)  # epochs are kept by what the decoder alone retrieves for the shopper
    keeper = BestEpoch(model, data, cfg, s.keep_best_epoch)
    history = train_sid_model(model, data.bank, examples=examples, epochs=s.decoder_epochs, batch_size=s.batch_size, lr=s.decoder_lr,
                              weight_decay=s.weight_decay, anonymize_prob=s.anonymize_prob, seed=cfg.seed, val=val, on_epoch=keeper, trie=data.trie)
    kept = keeper.restore()
    model.learned_weight.fill_(weight)
    return {"decoder": {**kept, "n_examples": len(examples), "n_logged_examples": n_logged, "train_loss": round(history[-1]["loss"], 5),
                        "val_loss": round(history[-1].get("val_loss", float("nan")), 5), "seconds": round(time.perf_counter() - t1, 2)}}


def _fill_users(model: SIDGenerator, data: GenerativeData) -> None:
    ev = data.events
    model.leaf.fill_users(user_rows_of(data, ev["user_id"].to_numpy(np.int64)), ev["item_id"].to_numpy(np.int64), ev["action"].to_numpy(np.int64))


def _sft_leaf(cfg: Config, root: Path, data: GenerativeData, model: SIDGenerator, t0: float) -> dict[str, Any]:
    """Geometric SFT: the user representation from the TRAIN logs, then the leaf head's position-debiased
    listwise loss over the logged impressions + the beam's items (the decoder stays as pretrained)."""
    s, H = cfg.generative.sft, cfg.generative.model.history_len
    if model.tied:
        return _sft_tied(cfg, root, data, model, t0)
    _fill_users(model, data)
    t1 = time.perf_counter()
    train = leaf_lists(model, data, cfg=cfg, qs=data.train, events=data.events, personal=True, exclude_own=True, anonymize_prob=s.anonymize_prob, seed=cfg.seed)
    val = leaf_lists(model, data, cfg=cfg, qs=data.val, events=val_events(root, data), personal=True)
    set_feature_scale(model.leaf, train)  # the user features, constant (0) while pretraining
    keeper = BestEpoch(model, data, cfg, s.keep_best_epoch, served_anonymously=True)
    history = fit_leaf(model.leaf, train, epochs=s.leaf_epochs, lr=s.leaf_lr, seed=cfg.seed, val=val, on_epoch=keeper)
    kept = {**keeper.restore(), **choose_shopper_weight(model, data, cfg)}
    metrics = {
        **kept,
        "n_lists": len(train),
        "n_list_items": int((train.cand >= 0).sum()),
        "train_loss": round(history[-1]["loss"], 5) if history else float("nan"),
        "val_loss": round(history[-1].get("val_loss", float("nan")), 5) if history else float("nan"),
        "history": by_epoch(history),
        "train_seconds": round(time.perf_counter() - t1, 2),
    }
    metrics = finish_stage(root, "sft", cfg=cfg, model=model, data=data, history=history, metrics=metrics, user_history=latest_history(data.events, H), curve_keys=["loss", "val_loss"])
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics


def _sft_tied(cfg: Config, root: Path, data: GenerativeData, model: SIDGenerator, t0: float) -> dict[str, Any]:
    """SFT of the tied generator: the decoder learns the shopper on its share of the TRAIN queries
    (:func:`_sft_decoder`), then, for each decoder weight, the leaf head's position-debiased listwise loss on the
    other share (queries the decoder never trained on) and the personalised VAL probe; the weight with the most VAL
    orders is kept with its leaf head (choose_decoder_weight). If that is worse on VAL than the pretrained model as
    served, the stage ships its input."""
    s, H = cfg.generative.sft, cfg.generative.model.history_len
    dec_q, leaf_q = _stacking(model, data, cfg)
    start_state = copy.deepcopy(model.state_dict())
    start = probe(model, data, cfg, anonymous=True)
    decoder = _sft_decoder(cfg, root, data, model, dec_q) if s.decoder_epochs else {}
    _fill_users(model, data)
    t1 = time.perf_counter()
    histories: dict[float, list[dict]] = {}

    def fit(qs: QuerySet = leaf_q) -> dict[str, float]:
        train = leaf_lists(model, data, cfg=cfg, qs=qs, events=data.events, personal=True, exclude_own=True, anonymize_prob=s.anonymize_prob, seed=cfg.seed)
        set_feature_scale(model.leaf, train)  # the user features, constant (0) while pretraining
        history = fit_leaf(model.leaf, train, epochs=s.leaf_epochs, lr=s.leaf_lr, seed=cfg.seed,
                           val=leaf_lists(model, data, cfg=cfg, qs=data.val, events=val_events(root, data), personal=True))
        histories[float(model.learned_weight)] = history
        return {"n_lists": len(train), "train_loss": round(history[-1]["loss"], 5) if history else float("nan"),
                "val_loss": round(history[-1].get("val_loss", float("nan")), 5) if history else float("nan")}

    chosen = choose_decoder_weight(model, data, cfg=cfg, fit=fit, refit=lambda: fit(data.train), anonymous=False)
    key = selection_key(start)
    kept = {"selection_metric": key, f"val_{key}_input_as_served": round(start.get(key, 0.0), 5),
            f"val_{key}_kept": chosen.get("val_after_refit", chosen["val_by_decoder_weight"][f"w{chosen['learned_weight']:g}"])[key]}
    if s.keep_best_epoch and kept[f"val_{key}_kept"] <= start.get(key, 0.0):
        log.warning("SFT does not beat its input as served on VAL (%s %.4f <= %.4f): shipping the pretrained model", key,
                    kept[f"val_{key}_kept"], start.get(key, 0.0))
        model.load_state_dict(start_state)
        kept["kept_input"] = True
    else:
        kept.update(choose_shopper_weight(model, data, cfg))
    history = histories.get(float(model.learned_weight)) or [{"epoch": 0, "loss": float("nan")}]
    metrics = {**kept, **decoder, **chosen, "history": by_epoch(history), "train_seconds": round(time.perf_counter() - t1, 2)}
    metrics = finish_stage(root, "sft", cfg=cfg, model=model, data=data, history=history, metrics=metrics, user_history=latest_history(data.events, H), curve_keys=["loss", "val_loss"])
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics


def _dpo_leaf(cfg: Config, root: Path, data: GenerativeData, ckpt, t0: float) -> dict[str, Any]:
    """Geometric DPO: the leaf head against the frozen SFT head on logged preference pairs over the model's own lists."""
    d = cfg.generative.dpo
    policy = ckpt.model
    reference = copy.deepcopy(policy.leaf).eval()
    _, leaf_q = _stacking(policy, data, cfg)
    train = leaf_lists(policy, data, cfg=cfg, qs=leaf_q, events=data.events, personal=True, exclude_own=True, seed=cfg.seed)
    val = leaf_lists(policy, data, cfg=cfg, qs=data.val, events=val_events(root, data), personal=True)
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
    metrics = finish_stage(root, "dpo", cfg=cfg, model=policy, data=data, history=history, metrics=metrics, user_history=ckpt.user_history, curve_keys=keys)
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
    metrics = finish_stage(root, "dpo", cfg=cfg, model=policy, data=data, history=history, metrics=metrics, user_history=ckpt.user_history, curve_keys=keys)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics
