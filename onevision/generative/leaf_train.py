"""Training the leaf head (onevision.generative.leaf) on the model's own candidates.

For every training query the geometric beam search (onevision.generative.geosearch)
proposes its candidates; the photographed item and the items of the query's
logged impression list join them (their prefix scores are computed the way the
beam would have), so each query is a small list of items with fixed features.
Features do not depend on the head's weights, so they are computed once and
the head trains in seconds:

* **listwise SFT** (:func:`fit_leaf`): softmax cross-entropy over a query's list
  with target mass on the photographed item (``exact_weight``) and on what the
  shopper clicked or ordered, each click divided by the examination probability
  of its logged position (``1 / log2(pos + 2)``, capped): position-debiased, so
  an item clicked low in the list counts for what it was worth;
* **DPO** (:func:`fit_leaf_dpo`): pairs (chosen, rejected) from the logged
  feedback on the same lists (ordered > clicked > shown-but-skipped; the
  photographed item is never the rejected one), with the frozen SFT head as the
  reference: ``-log sigmoid(beta ((s_w - s_w^ref) - (s_l - s_l^ref)))``. The
  normaliser of the listwise softmax cancels in the difference, so this is DPO
  on the head's distribution over the list.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from onevision.generative.geosearch import candidate_prefix_scores, geometric_beam_search
from onevision.generative.leaf import LeafScorer, listwise_loss
from onevision.generative.model import ACTION_ORDER, SIDGenerator
from onevision.generative.train import ContextRows, ImageBank
from onevision.generative.trie import SIDTrie

log = logging.getLogger(__name__)

MAX_PROPENSITY_WEIGHT = 3.0  # cap of 1 / examination(position)


@dataclass
class LeafExamples:
    """Fixed-feature lists: feats (E, M, F), target (E, M) weights, cand (E, M) store rows (-1 pads),
    chosen/rejected (P,) flat positions into (E*M) for DPO pairs."""

    feats: torch.Tensor
    target: torch.Tensor
    cand: torch.Tensor
    pairs: torch.Tensor  # (P, 2) long: (chosen, rejected) flat indices e*M + m

    def __len__(self) -> int:
        return self.feats.shape[0]


def _list_prefix_scores(model: SIDGenerator, ctx, *, trie: SIDTrie, item_mat: torch.Tensor, beam) -> torch.Tensor:
    """(B, M) beam scores of each list's items' prefixes: the beam's own items (the first ones of each list, in beam
    order) keep the score the search gave them; only the items added after them (the photographed item, the logged
    impressions) are scored by teacher forcing, so a decoder pass runs over a dozen candidates per list, not the beam."""
    B, M = item_mat.shape
    W = beam.item_ids.shape[1]
    n_beam = (beam.item_ids >= 0).sum(1)  # (B,) the beam's items lead each list
    prefix = torch.full((B, M), float("-inf"))
    head = min(W, M)
    in_beam = torch.arange(head).unsqueeze(0) < n_beam.unsqueeze(1)  # (B, head)
    beam_scores = beam.scores if beam.prefix_scores is None else beam.prefix_scores  # without the shopper term
    prefix[:, :head] = torch.where(in_beam, beam_scores[:, :head].float(), prefix[:, :head])
    extra_pos = torch.arange(M).unsqueeze(0) >= n_beam.unsqueeze(1)  # (B, M) items appended after the beam
    extra_pos &= item_mat >= 0
    n_extra = int(extra_pos.sum(1).max()) if B else 0
    if n_extra == 0:
        return prefix
    order = torch.argsort((~extra_pos).to(torch.int8), dim=1, stable=True)[:, :n_extra]  # (B, E) their positions first
    ok = extra_pos.gather(1, order)
    extra_items = item_mat.gather(1, order).masked_fill(~ok, -1)
    L = trie.n_levels
    sids = trie.sid_of(extra_items.reshape(-1).clamp(min=0)).view(B, n_extra, L).masked_fill((extra_items < 0).unsqueeze(-1), -1)
    scores = candidate_prefix_scores(model, ctx, sids=sids, trie=trie, shopper=False)  # (B, E) as the leaf head reads them
    prefix.scatter_(1, order, torch.where(ok, scores, prefix.gather(1, order)))
    return prefix


def _examination_weight(position: int) -> float:
    """1 / examination probability of a logged position (the simulator's DCG discount), capped."""
    return min(math.log2(position + 2.0), MAX_PROPENSITY_WEIGHT)


def build_leaf_examples(
    model: SIDGenerator, bank: ImageBank, *, rows: ContextRows, frame: pd.DataFrame, trie: SIDTrie,
    impressions: pd.DataFrame | None, events: pd.DataFrame | None, beam_width: int, exact_weight: float,
    click_weight: float, order_weight: float, skip_positions: int = 10, anonymous: bool = False, exclude_own: bool = False,
    anonymize_prob: float = 0.0, pair_types: tuple[str, ...] = ("order>click", "order>skip", "click>skip"), photo_pairs: int = 3, seed: int = 0,
    batch_size: int = 512,
) -> LeafExamples:
    """Candidate lists with features and targets for the queries of ``frame`` (query_id, item_id) whose contexts are ``rows``.

    ``exclude_own``: take each query's own logged events out of its user's counts (TRAIN queries, whose
    events built the counts); ``anonymize_prob``: share of lists built with an empty user representation,
    so that anonymous serving stays calibrated; ``pair_types``: the DPO pairs to collect."""
    gen = torch.Generator().manual_seed(seed)
    leaf = model.leaf
    if leaf is None:
        raise ValueError("the model has no leaf head")
    if anonymous:
        rows = ContextRows.anonymous(rows.image_idx, rows.history.shape[1], trie.n_levels)
    qids = frame["query_id"].to_numpy(np.int64)
    targets = frame["item_id"].to_numpy(np.int64)
    shown: dict[int, list[tuple[int, int]]] = {}
    if impressions is not None:
        imp = impressions[impressions["query_id"].isin(qids)]
        for q, item, pos in zip(imp["query_id"].to_numpy(), imp["item_id"].to_numpy(), imp["position"].to_numpy(), strict=True):
            shown.setdefault(int(q), []).append((int(item), int(pos)))
    acted: dict[int, dict[int, int]] = {}
    if events is not None:
        ev = events[events["query_id"].isin(qids)]
        for q, item, a in zip(ev["query_id"].to_numpy(), ev["item_id"].to_numpy(), ev["action"].to_numpy(), strict=True):
            acted.setdefault(int(q), {})[int(item)] = int(a)
    feats, tgts, cands, pairs = [], [], [], []
    offset = 0
    for start in range(0, len(rows), batch_size):
        idx = torch.arange(start, min(len(rows), start + batch_size))
        ctx = rows.context(bank, idx)
        res = geometric_beam_search(model, ctx, trie=trie, beam_width=beam_width, k=beam_width, use_leaf=False)
        beam_items = res.item_ids.numpy()
        lists, weights, shown_pos = [], [], []
        for j, e in enumerate(idx.tolist()):
            q, t = int(qids[e]), int(targets[e])
            items = [int(i) for i in beam_items[j] if i >= 0]
            extra = [t] + [i for i, _ in shown.get(q, [])]
            seen = set(items)
            for i in extra:
                if i not in seen:
                    items.append(i)
                    seen.add(i)
            pos_of = {i: p for i, p in shown.get(q, [])}
            w = np.zeros(len(items))
            w[items.index(t)] += exact_weight
            for i, a in acted.get(q, {}).items():
                if i in seen:
                    base = order_weight if a == ACTION_ORDER else click_weight
                    w[items.index(i)] += base * _examination_weight(pos_of.get(i, 0))
            lists.append(items)
            weights.append(w)
            shown_pos.append(pos_of)
        M = max(len(x) for x in lists)
        item_mat = torch.full((len(idx), M), -1, dtype=torch.long)
        tgt = torch.zeros(len(idx), M)
        for j, (items, w) in enumerate(zip(lists, weights, strict=True)):
            item_mat[j, : len(items)] = torch.tensor(items)
            tgt[j, : len(items)] = torch.from_numpy(w).float()
        prefix = _list_prefix_scores(model, ctx, trie=trie, item_mat=item_mat, beam=res)
        cand = leaf.rows(item_mat)
        profile = leaf.profile(ctx.user)
        if exclude_own:  # a TRAIN query's own clicks are in its user's counts: take them out (no label leak)
            own_items, own_actions, own_rows = [], [], []
            for j, e in enumerate(idx.tolist()):
                for i, a in acted.get(int(qids[e]), {}).items():
                    own_items.append(i)
                    own_actions.append(a)
                    own_rows.append(j)
            if own_items:
                profile = profile - leaf.event_counts(torch.tensor(own_items), torch.tensor(own_actions), torch.tensor(own_rows), len(idx))
        if anonymize_prob > 0:
            profile = profile.masked(torch.rand(len(idx), generator=gen) >= anonymize_prob)
        f = leaf.features(ctx.image, cand, prefix.masked_fill(~torch.isfinite(prefix), -30.0), profile)
        feats.append(f)
        tgts.append(tgt)
        cands.append(cand)
        if "photo>above" in pair_types:  # on-policy: the head's own mistakes above the photographed item are rejected
            with torch.no_grad():
                s = leaf.score(f).masked_fill(cand < 0, float("-inf"))  # (b, M)
            for j, e in enumerate(idx.tolist()):
                t_pos = int((item_mat[j] == int(targets[e])).nonzero()[0, 0])
                above = torch.nonzero(s[j] > s[j, t_pos]).flatten()
                above = above[torch.argsort(s[j, above], descending=True)][:photo_pairs]
                pairs += [(offset + j, t_pos, int(m)) for m in above.tolist()]
        for j, e in enumerate(idx.tolist()):
            q, t = int(qids[e]), int(targets[e])
            acts = acted.get(q, {})
            pos = {int(i): m for m, i in enumerate(item_mat[j].tolist()) if i >= 0}
            orders = [i for i, a in acts.items() if a == ACTION_ORDER and i in pos]
            clicks = [i for i, a in acts.items() if a != ACTION_ORDER and i in pos]
            skips = [i for i, p in shown_pos[j].items() if i not in acts and p < skip_positions and i != t and i in pos]
            r = offset + j
            for w_ in orders:
                losers = (clicks if "order>click" in pair_types else []) + (skips if "order>skip" in pair_types else [])
                pairs += [(r, pos[w_], pos[x]) for x in losers if x != t]  # never reject the photographed item
            if "click>skip" in pair_types:
                for w_ in clicks:
                    pairs += [(r, pos[w_], pos[x]) for x in skips]
        offset += len(idx)
    M = max(f.shape[1] for f in feats)
    pad = lambda x, v: torch.nn.functional.pad(x, (0, M - x.shape[1]), value=v)  # noqa: E731
    feats_all = torch.cat([torch.nn.functional.pad(f, (0, 0, 0, M - f.shape[1])) for f in feats])
    p = torch.tensor(pairs, dtype=torch.long).reshape(-1, 3)
    out_pairs = torch.stack([p[:, 0] * M + p[:, 1], p[:, 0] * M + p[:, 2]], dim=1)
    return LeafExamples(feats_all, torch.cat([pad(t, 0.0) for t in tgts]), torch.cat([pad(c, -1) for c in cands]), out_pairs)


def set_feature_scale(leaf: LeafScorer, examples: LeafExamples) -> None:
    """Normalise features by their spread on the training lists (kept in the head, used at serving).

    Only features still unscaled (scale 1) and not constant on these lists are set, so that a head trained
    on anonymous lists (user features all 0) keeps its function when SFT adds the user features."""
    valid = examples.cand >= 0
    x = examples.feats[valid]  # (n, F)
    std = x.std(0) if len(x) > 1 else torch.zeros(x.shape[1])
    update = (leaf.feature_scale == 1.0) & (std > 1e-4)
    with torch.no_grad():
        cos_weight = float(leaf.linear.weight[0, 0] * leaf.feature_scale[0])  # weight per raw unit of cosine
        leaf.feature_scale.copy_(torch.where(update, 1.0 / std.clamp(min=1e-4), leaf.feature_scale))
        if update[0]:
            leaf.linear.weight[0, 0] = cos_weight / leaf.feature_scale[0]


def _scores(leaf: LeafScorer, ex: LeafExamples, idx: torch.Tensor) -> torch.Tensor:
    return leaf.score(ex.feats[idx]).masked_fill(ex.cand[idx] < 0, float("-inf"))


def fit_leaf(
    leaf: LeafScorer, train: LeafExamples, *, epochs: int, lr: float, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0,
    on_epoch: Callable[[int, dict], None] | None = None, val: LeafExamples | None = None,
) -> list[dict]:
    """Listwise SFT of the head (module docstring); returns per-epoch records (loss, val_loss)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(leaf.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(1, epochs + 1):
        leaf.train()
        total, n = 0.0, 0
        for idx in torch.randperm(len(train), generator=gen).split(batch_size):
            loss = listwise_loss(_scores(leaf, train, idx), train.target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        leaf.eval()
        record = {"epoch": epoch, "loss": total / max(n, 1)}
        if val is not None and len(val):
            with torch.no_grad():
                record["val_loss"] = float(listwise_loss(_scores(leaf, val, torch.arange(len(val))), val.target))
        if on_epoch is not None:
            on_epoch(epoch, record)
        history.append(record)
    return history


def _pair_margins(leaf: LeafScorer, ex: LeafExamples, pairs: torch.Tensor) -> torch.Tensor:
    M = ex.feats.shape[1]
    rows = pairs // M
    uniq, inv = torch.unique(rows, return_inverse=True)
    s = leaf.score(ex.feats[uniq])  # (u, M)
    flat = s.reshape(-1)
    local = inv * M + pairs % M
    return flat[local[:, 0]] - flat[local[:, 1]]


def fit_leaf_dpo(
    policy: LeafScorer, reference: LeafScorer, *, train: LeafExamples, beta: float, epochs: int, lr: float, sft_weight: float,
    batch_size: int = 1024, seed: int = 0, on_epoch: Callable[[int, dict], None] | None = None, val: LeafExamples | None = None,
) -> list[dict]:
    """DPO of the head against a frozen reference on the lists' logged preference pairs (+ ``sft_weight`` x the listwise loss)."""
    if not len(train.pairs):
        raise ValueError("no preference pairs in the TRAIN lists")
    reference = copy.deepcopy(reference).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    history = []
    M = train.feats.shape[1]
    with torch.no_grad():
        ref_margin = _pair_margins(reference, train, train.pairs)
    for epoch in range(1, epochs + 1):
        policy.train()
        total, correct, n = 0.0, 0.0, 0
        for idx in torch.randperm(len(train.pairs), generator=gen).split(batch_size):
            pairs = train.pairs[idx]
            margin = _pair_margins(policy, train, pairs)
            logits = beta * (margin - ref_margin[idx])
            loss = -torch.nn.functional.logsigmoid(logits).mean()
            if sft_weight > 0:
                rows = torch.unique(pairs[:, 0] // M)
                loss = loss + sft_weight * listwise_loss(_scores(policy, train, rows), train.target[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += float(((margin > 0).float() + 0.5 * (margin == 0).float()).sum())  # ties count 0.5
            n += len(idx)
        policy.eval()
        record = {"epoch": epoch, "loss": total / max(n, 1), "preference_accuracy": correct / max(n, 1)}
        if val is not None and len(val.pairs):
            record["val_preference_accuracy"] = preference_accuracy(policy, val)
        if on_epoch is not None:
            on_epoch(epoch, record)
        history.append(record)
    return history


@torch.no_grad()
def preference_accuracy(leaf: LeafScorer, ex: LeafExamples) -> float:
    """Share of pairs the head orders as logged (ties count 0.5)."""
    if not len(ex.pairs):
        return math.nan
    m = _pair_margins(leaf, ex, ex.pairs)
    return float(((m > 0).float() + 0.5 * (m == 0).float()).mean())


@torch.no_grad()
def list_kl(policy: LeafScorer, reference: LeafScorer, ex: LeafExamples) -> float:
    """Mean KL(policy || reference) of the heads' softmax over each list."""
    if not len(ex):
        return math.nan
    idx = torch.arange(len(ex))
    lp = torch.log_softmax(_scores(policy, ex, idx), 1)
    lr = torch.log_softmax(_scores(reference, ex, idx), 1)
    ok = ex.cand >= 0
    return float(torch.where(ok, lp.exp() * (lp - lr), torch.zeros_like(lp)).sum(1).mean())
