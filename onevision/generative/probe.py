"""The VAL probe every generative stage ends with, and the choices made on it: which epoch a stage keeps
(:class:`BestEpoch`) and the decoder's weight in decoding (:func:`choose_decoder_weight`).

The probe decodes VAL queries with constrained beam search, as the evaluation
does, and scores the list the evaluation shows: exact-item HR@10 / MRR,
simulated clicks and orders (UserSimulator, when ``user_tastes`` exists), the
logged clicks and orders the list contains, the share of the user's favourite
brands in the top 10.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from onevision.config import Config
from onevision.data.simulator import UserSimulator
from onevision.evaluation.metrics import hit_rate_at_k, hits_at_k, reciprocal_rank
from onevision.generative.decode import beam_search
from onevision.generative.geosearch import geometric_beam_search
from onevision.generative.inputs import GenerativeData
from onevision.generative.model import SIDGenerator
from onevision.generative.train import (
    ContextRows,
    ImageBank,
)
from onevision.generative.trie import SIDTrie

log = logging.getLogger(__name__)


PROBE_K = 10
LEARNED_MIN_GAIN = 0.005  # VAL beam recall a learned-term weight must add over geometry alone to be kept (untied decoder)


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


def beam_only_hr(model: SIDGenerator, data: GenerativeData, cfg: Config, **options) -> float:
    """VAL HR@10 of the geometric search without the leaf head (anonymous), e.g. ``geo_weight=0`` (the decoder's own
    trie-constrained generation) or ``learned_weight=0`` (residual geometry alone): what the generator retrieves."""
    val = data.val
    if not len(val):
        return float("nan")
    rows = ContextRows.anonymous(val.rows.image_idx, val.rows.history.shape[1], data.trie.n_levels)
    target = val.frame["item_id"].to_numpy(np.int64)
    hits = []
    for start in range(0, len(rows), cfg.generative.decode.batch_size):
        idx = torch.arange(start, min(len(rows), start + cfg.generative.decode.batch_size))
        res = geometric_beam_search(model, rows.context(data.bank, idx), trie=data.trie, beam_width=cfg.generative.decode.beam_width,
                                    k=PROBE_K, use_leaf=False, **options)
        hits.append((res.item_ids.numpy() == target[idx.numpy(), None]).any(1))
    return float(np.concatenate(hits).mean())


def choose_decoder_weight(model: SIDGenerator, data: GenerativeData, *, cfg: Config, fit, refit=None, anonymous: bool = True) -> dict[str, Any]:
    """The tied decoder's weight in decoding, chosen on what the shopper sees: for each weight of
    ``generative.decode.learned_weights`` the leaf head is fitted from the same start on that weight's beams
    (``fit()``), then the VAL probe (``anonymous`` after pretraining, which knows no users) scores the shown list; the
    weight with the most VAL orders (the stage's selection metric; HR@10 breaks ties, then the smaller weight) is
    kept with its leaf head; a weight > 0 only if it adds ``generative.decode.min_decoder_gain`` (relative) to
    geometry alone, since the decoder pass costs latency. When that weight is 0 the decoder is out of the shipped path and the leaf head needs no
    queries kept from the decoder: ``refit()`` (when given) fits it again from the start on every TRAIN query. Returns
    the chosen weight and the VAL table by weight."""
    start = copy.deepcopy(model.leaf.state_dict())
    table: dict[float, dict[str, float]] = {}
    best, best_key, best_state, fit_out = None, None, None, {}
    for w in sorted({float(x) for x in cfg.generative.decode.learned_weights}):
        model.learned_weight.fill_(w)
        model.leaf.load_state_dict(start)
        out = fit()
        p = probe(model, data, cfg, anonymous=anonymous)
        key = selection_key(p)
        table[w] = {key: round(p.get(key, 0.0), 5), "hr_at_10": round(p.get("hr_at_10", 0.0), 5), "decode_ms_per_query": round(p.get("decode_ms_per_query", 0.0), 3)}
        # a decoder pass costs latency at every level: a weight > 0 must add min_decoder_gain (relative) to the
        # selection metric of geometry alone (weight 0, tried first) to be kept
        score = p.get(key, 0.0)
        if w > 0.0 and 0.0 in table:
            score = score if score >= table[0.0][key] * (1.0 + cfg.generative.decode.min_decoder_gain) else float("-inf")
        rank = (score, p.get("hr_at_10", 0.0), -w)
        if best_key is None or rank > best_key:
            best, best_key, best_state, fit_out = w, rank, copy.deepcopy(model.leaf.state_dict()), out
        log.info("decoder weight %.2f: VAL %s", w, table[w])
    model.learned_weight.fill_(best)
    model.leaf.load_state_dict(best_state)
    log.info("decoder weight %.2f kept (VAL after the leaf head, by weight: %s)", best, table)
    if best == 0.0 and refit is not None and cfg.generative.decoder_share < 1.0:
        model.leaf.load_state_dict(start)
        fit_out = refit()
        p = probe(model, data, cfg, anonymous=anonymous)
        fit_out["val_after_refit"] = {key: round(p.get(key, 0.0), 5) for key in (selection_key(p), "hr_at_10")}
        log.info("no decoder in the path: the leaf head refitted on every TRAIN query (VAL %s)", fit_out["val_after_refit"])
    beams = {"val_decoder_only_hr_at_10": round(beam_only_hr(model, data, cfg, geo_weight=0.0), 5),
             "val_prior_only_hr_at_10": round(beam_only_hr(model, data, cfg, learned_weight=0.0), 5)}
    log.info("VAL HR@10 without the leaf head: %s", beams)
    return {**fit_out, **beams, "learned_weight": best, "val_by_decoder_weight": {f"w{w:g}": v for w, v in table.items()}}


def choose_shopper_weight(model: SIDGenerator, data: GenerativeData, cfg: Config) -> dict[str, Any]:
    """The weight of the shopper's prefix term in the beam (geosearch.shopper_scores), chosen on what the shopper
    sees: the personalised VAL probe after the leaf head for each weight of ``generative.decode.shopper_weights``
    (0 always tried); the most VAL orders wins (HR@10 breaks ties, then the smaller weight), a weight > 0 only if it
    adds ``generative.decode.min_shopper_gain`` (relative) to weight 0, since the term costs latency at every level.
    Returns the chosen weight and the VAL table by weight (with the beam's recall of the other items VAL shoppers
    clicked or ordered)."""
    weights = sorted({0.0, *(float(x) for x in cfg.generative.decode.shopper_weights)})
    if model.leaf is None or len(weights) == 1 or not len(data.val):
        model.shopper_weight.fill_(0.0)
        return {}
    table: dict[float, dict[str, float]] = {}
    best, best_rank = 0.0, None
    for w in weights:
        model.shopper_weight.fill_(w)
        p = probe(model, data, cfg)
        key = selection_key(p)
        table[w] = {key: round(p.get(key, 0.0), 5), "hr_at_10": round(p.get("hr_at_10", 0.0), 5),
                    "beam_other_recall": round(beam_other_recall(model, data, cfg), 5)}
        score = p.get(key, 0.0)
        if w > 0.0 and score < table[0.0][key] * (1.0 + cfg.generative.decode.min_shopper_gain):
            score = float("-inf")  # does not pay for its lookups
        rank = (score, p.get("hr_at_10", 0.0), -w)
        if best_rank is None or rank > best_rank:
            best, best_rank = w, rank
        log.info("shopper weight %.2f: VAL %s", w, table[w])
    model.shopper_weight.fill_(best)
    log.info("shopper weight %.2f kept", best)
    return {"shopper_weight": best, "val_by_shopper_weight": {f"s{w:g}": v for w, v in table.items()}}


def beam_other_recall(model: SIDGenerator, data: GenerativeData, cfg: Config) -> float:
    """Share of the items VAL shoppers clicked or ordered, other than the photographed one, that the personalised
    beam holds (``generative.decode.beam_width`` prefixes, before the leaf head): what the generator proposes for the
    shopper beyond the photo. NaN without a VAL log."""
    val, logged = data.val, [x for x in (data.val_clicked, data.val_ordered) if x is not None]
    if not len(val) or not logged:
        return float("nan")
    acted = np.concatenate(logged, axis=1)  # (Q, R) item ids, -1 pads
    target = val.frame["item_id"].to_numpy(np.int64)
    found = total = 0
    W, bs = cfg.generative.decode.beam_width, cfg.generative.decode.batch_size
    for start in range(0, len(val), bs):
        idx = torch.arange(start, min(len(val), start + bs))
        res = geometric_beam_search(model, val.rows.context(data.bank, idx), trie=data.trie, beam_width=W, k=W * cfg.generative.decode.max_leaves,
                                    max_leaves=cfg.generative.decode.max_leaves, use_leaf=False)
        beam = res.item_ids.numpy()
        for j, e in enumerate(idx.tolist()):
            other = set(acted[e][acted[e] >= 0].tolist()) - {int(target[e])}
            found += len(other & set(beam[j].tolist()))
            total += len(other)
    return found / total if total else float("nan")
