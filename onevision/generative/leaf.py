"""The leaf head: the last generation step of OneVision, scored over the beam's items only.

Beam search walks the VRQ levels of the SID trie (onevision.generative.geosearch);
the prefixes it keeps stand for a handful of catalog items each (the
disambiguation level). The leaf head chooses among those items, and it is where
the shopper reaches every item: it reads what the model stores **per item**
(aligned embedding, category, brand, price relative to its category, logged
popularity) and the **user representation** (counts of the categories and brands
of the user's TRAIN clicks and orders, their mean price ratio), and scores each candidate with a
small MLP over these features:

====  ==================================================================
 0    cosine of the query's aligned embedding and the item's
 1    that cosine minus the best candidate's (how far behind it is)
 2    the beam score of the item's prefix minus the best one (generator's belief)
 3    category vote: similarity-weighted share of candidates in the item's category
 4    user category lift: log share of the user's events in that category vs uniform
 5    user brand lift: the same for the item's brand
 6    item price vs its category's median (log ratio)
 7    that price ratio times the user's mean price ratio (price taste)
 8    log(1 + the user's event count)
 9    item popularity: smoothed log click-through rate in the TRAIN logs
10    the item's category share among the user's *orders*
11    the best cosine of the query to one of the item's catalog views (a query is a photo of one view)
12    that best-view cosine minus the best candidate's
====  ==================================================================

Anonymous contexts have features 4, 5, 7, 8, 10 at 0 by construction, so one
head serves both. Nothing here is proportional to the catalog: a query costs
O(candidates x features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from onevision.generative.model import ACTION_ORDER
from onevision.generative.tensors import take_rows

N_FEATURES = 13


@dataclass
class Profile:
    """A batch of user representations: weighted event counts by category (B, C) and brand (B, NB), the
    weighted sum of log price ratios (B,), order counts by category (B, C)."""

    cat: torch.Tensor
    brand: torch.Tensor
    price: torch.Tensor
    order_cat: torch.Tensor

    def masked(self, keep: torch.Tensor) -> Profile:
        """Rows where ``keep`` (B,) is False become anonymous (all counts 0)."""
        k = keep.float()
        return Profile(self.cat * k[:, None], self.brand * k[:, None], self.price * k, self.order_cat * k[:, None])

    def __sub__(self, other: Profile) -> Profile:
        return Profile(self.cat - other.cat, self.brand - other.brand, self.price - other.price, self.order_cat - other.order_cat)
VOTE_TEMPERATURE = 0.05


class LeafScorer(nn.Module):
    """Per-item store (buffers) + the MLP that scores candidates (see the module docstring)."""

    def __init__(self, n_items: int, dim: int, *, n_categories: int, n_brands: int, n_users: int = 0, hidden: int = 32, n_views: int = 1):
        super().__init__()
        self.register_buffer("view_emb", torch.zeros(n_items, max(n_views, 1), dim))  # catalog views, L2-normalised; 0 rows pad
        self.register_buffer("view_ok", torch.zeros(n_items, max(n_views, 1), dtype=torch.bool))
        self.n_categories, self.n_brands = max(int(n_categories), 1), max(int(n_brands), 1)
        self.register_buffer("item_ids", torch.zeros(n_items, dtype=torch.long))  # sorted
        self.register_buffer("emb", torch.zeros(n_items, dim))  # L2-normalised aligned item embeddings
        self.register_buffer("category", torch.zeros(n_items, dtype=torch.long))
        self.register_buffer("brand", torch.zeros(n_items, dtype=torch.long))
        self.register_buffer("price_ratio", torch.zeros(n_items))  # log(price / median price of its category)
        self.register_buffer("popularity", torch.zeros(n_items))  # smoothed log CTR
        self.register_buffer("feature_scale", torch.ones(N_FEATURES))
        # the user representation: counts over the user's TRAIN clicks/orders (an order counts twice), by user row (0: anonymous)
        self.register_buffer("user_cat", torch.zeros(n_users + 1, self.n_categories))
        self.register_buffer("user_brand", torch.zeros(n_users + 1, self.n_brands))
        self.register_buffer("user_price", torch.zeros(n_users + 1))  # weighted sum of log price ratios
        self.register_buffer("user_order_cat", torch.zeros(n_users + 1, self.n_categories))
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.linear = nn.Linear(N_FEATURES, 1)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        with torch.no_grad():  # start as "cosine decides" (a sensible untrained head)
            self.linear.weight.zero_()
            self.linear.bias.zero_()
            self.linear.weight[0, 0] = 20.0

    # ------------------------------------------------------------------ the store
    def fill(self, items: pd.DataFrame, item_ids: np.ndarray, embeddings: np.ndarray, impressions: pd.DataFrame | None = None,
             events: pd.DataFrame | None = None) -> None:
        """Per-item data from the items table (item_id, category, brand, price), the fused item embeddings
        and, when given, the TRAIN logs (impressions: query_id, item_id; events: query_id, item_id, action)."""
        self.__dict__.pop("_makeup", None)  # prefix make-ups and node geometry of the old store
        self.__dict__.pop("_nodes", None)
        order = np.argsort(item_ids, kind="stable")
        ids, emb = np.asarray(item_ids, np.int64)[order], np.asarray(embeddings, np.float32)[order]
        if len(ids) != len(self.item_ids):
            raise ValueError(f"the leaf head was built for {len(self.item_ids)} items, got {len(ids)}")
        table = items.set_index("item_id").reindex(ids)
        if table["category"].isna().any():
            missing = ids[table["category"].isna().to_numpy()][:5].tolist()
            raise ValueError(f"items {missing} have embeddings but no row in the items table")
        category = np.array(table["category"].to_numpy(np.int64))  # a writable copy
        brands = pd.Categorical(table["brand"].astype(str))
        price = table["price"].to_numpy(np.float64)
        median = pd.Series(price).groupby(category).transform("median").to_numpy()
        clicks = np.zeros(len(ids))
        shows = np.zeros(len(ids))
        if impressions is not None and len(impressions):
            pos = np.searchsorted(ids, impressions["item_id"].to_numpy(np.int64)).clip(max=len(ids) - 1)
            np.add.at(shows, pos[ids[pos] == impressions["item_id"].to_numpy(np.int64)], 1)
        if events is not None and len(events):
            ev = events["item_id"].to_numpy(np.int64)
            pos = np.searchsorted(ids, ev).clip(max=len(ids) - 1)
            np.add.at(clicks, pos[ids[pos] == ev], 1)
        prior = (clicks.sum() + 1) / (shows.sum() + 10)
        ctr = (clicks + 10 * prior) / (shows + 10)
        with torch.no_grad():
            self.item_ids.copy_(torch.from_numpy(ids))
            self.emb.copy_(F.normalize(torch.from_numpy(emb), dim=-1))
            self.category.copy_(torch.from_numpy(category))
            self.brand.copy_(torch.from_numpy(brands.codes.astype(np.int64)))
            self.price_ratio.copy_(torch.from_numpy(np.log(price / median)).float())
            self.popularity.copy_(torch.from_numpy(np.log(ctr) - np.log(prior)).float())

    def event_counts(self, item_ids: torch.Tensor, actions: torch.Tensor, group: torch.Tensor, n_groups: int) -> Profile:
        """Per-group profile of events (item ids, actions, group index each)."""
        r = self.rows(item_ids)
        ok = r >= 0
        r, a, g = r[ok], actions[ok], group[ok]
        w = torch.where(a == ACTION_ORDER, 2.0, 1.0)
        cat, brand = self.category[r], self.brand[r]
        return Profile(
            torch.zeros(n_groups, self.n_categories).index_put_((g, cat), w, accumulate=True),
            torch.zeros(n_groups, self.n_brands).index_put_((g, brand), w, accumulate=True),
            torch.zeros(n_groups).index_put_((g,), w * self.price_ratio[r], accumulate=True),
            torch.zeros(n_groups, self.n_categories).index_put_((g, cat), (a == ACTION_ORDER).float(), accumulate=True),
        )

    def fill_users(self, user_rows: np.ndarray, item_ids: np.ndarray, actions: np.ndarray) -> None:
        """The user representation from TRAIN events: user row (1..U), item id, action each."""
        # torch.tensor copies: the columns often come read-only from Parquet, which torch.as_tensor warns about
        prof = self.event_counts(torch.tensor(np.asarray(item_ids, np.int64)), torch.tensor(np.asarray(actions, np.int64)),
                                 torch.tensor(np.asarray(user_rows, np.int64)), self.user_cat.shape[0])
        with torch.no_grad():
            self.user_cat.copy_(prof.cat)
            self.user_brand.copy_(prof.brand)
            self.user_price.copy_(prof.price)
            self.user_order_cat.copy_(prof.order_cat)

    def profile(self, user_rows: torch.Tensor) -> Profile:
        u = user_rows.clamp(min=0, max=self.user_cat.shape[0] - 1)
        return Profile(take_rows(self.user_cat, u), take_rows(self.user_brand, u), take_rows(self.user_price, u), take_rows(self.user_order_cat, u))

    def fill_views(self, view_item_ids: np.ndarray, view_embeddings: np.ndarray) -> None:
        """The catalog views' embeddings per item (at most ``n_views`` each; items without a view use the fused embedding)."""
        with torch.no_grad():
            self.view_emb.zero_()
            self.view_ok.zero_()
            self.view_emb[:, 0] = self.emb
            self.view_ok[:, 0] = True
            rows = self.rows(torch.as_tensor(np.asarray(view_item_ids, np.int64)))
            emb = F.normalize(torch.as_tensor(np.asarray(view_embeddings, np.float32)), dim=-1)
            ok = rows >= 0
            rows, emb = rows[ok], emb[ok]
            order = torch.argsort(rows, stable=True)
            rows, emb = rows[order], emb[order]
            first = torch.searchsorted(rows, rows)  # first position of each row's run
            slot = torch.arange(len(rows)) - first
            keep = slot < self.view_emb.shape[1]
            has = torch.zeros(len(self.emb), dtype=torch.bool)
            has[rows] = True
            self.view_ok[has] = False
            self.view_emb[rows[keep], slot[keep]] = emb[keep]
            self.view_ok[rows[keep], slot[keep]] = True

    def rows(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Item ids (any shape) -> store rows; -1 for ids the store does not hold (and for -1)."""
        pos = torch.searchsorted(self.item_ids, item_ids.clamp(min=0)).clamp(max=len(self.item_ids) - 1)
        return torch.where((take_rows(self.item_ids, pos) == item_ids) & (item_ids >= 0), pos, torch.full_like(pos, -1))

    # ------------------------------------------------------------------ the shopper's prefix term
    def user_lift(self, user_rows: torch.Tensor) -> torch.Tensor:
        """(B,) user rows -> (B, NB + C): the user's log lift of each brand and category over uniform (features 5
        and 4 for every brand and category); exactly 0 for an anonymous context."""
        p = self.profile(user_rows)
        n = p.cat.sum(1, keepdim=True).clamp(min=0)
        brand = torch.log((p.brand.clamp(min=0) + 1) / (n + self.n_brands)) + math.log(self.n_brands)
        cat = torch.log((p.cat.clamp(min=0) + 1) / (n + self.n_categories)) + math.log(self.n_categories)
        return torch.cat([brand, cat], dim=1)

    def subtree_makeup(self, trie, depth: int) -> torch.Tensor:
        """(N_depth, NB + C): the brand and category shares of the items under each depth-``depth`` node of ``trie``
        (what a prefix holds, for :meth:`user_lift` to score); computed once per trie and depth, then cached."""
        key = (id(trie), depth)
        cache = self.__dict__.setdefault("_makeup", {})
        if key not in cache:
            rows = self.rows(trie.leaf_item).clamp(min=0)  # (N,) store row of each leaf, trie order
            onehot = torch.cat([F.one_hot(self.brand[rows], self.n_brands), F.one_hot(self.category[rows], self.n_categories)], dim=1)
            cache[key] = (trie, trie.subtree_means(onehot.float(), depth))  # the trie is kept so its id stays its own
        return cache[key][1]

    # ------------------------------------------------------------------ features and scores
    def features(self, query: torch.Tensor, cand: torch.Tensor, prefix_score: torch.Tensor, profile: Profile) -> torch.Tensor:
        """query (B, D); cand (B, M) store rows, -1 pads; prefix_score (B, M); profile: the B users' counts
        -> features (B, M, N_FEATURES)."""
        valid = cand >= 0
        c = cand.clamp(min=0)
        q = F.normalize(query.float(), dim=-1)
        cos = torch.einsum("bd,bmd->bm", q, take_rows(self.emb, c))  # (B, M)
        neg = torch.finfo(cos.dtype).min
        best = cos.masked_fill(~valid, neg).max(1, keepdim=True).values
        pbest = prefix_score.masked_fill(~valid, neg).max(1, keepdim=True).values
        prefix_gap = (prefix_score - pbest).clamp(min=-30.0).masked_fill(~valid, 0.0)
        cat = take_rows(self.category, c)  # (B, M)
        weights = torch.softmax((cos / VOTE_TEMPERATURE).masked_fill(~valid, neg), dim=1)  # (B, M)
        mass = torch.zeros(len(q), self.n_categories).scatter_add_(1, cat, weights * valid)  # (B, C) similarity mass per category
        vote = mass.gather(1, cat)  # (B, M)
        # the user representation (a Profile of counts; zeros for anonymous contexts)
        C, NB = self.n_categories, self.n_brands
        n = profile.cat.sum(1, keepdim=True).clamp(min=0)  # (B, 1) weighted events
        cat_lift = torch.log((profile.cat.gather(1, cat).clamp(min=0) + 1) / (n + C)) + math.log(C)
        brand_lift = torch.log((profile.brand.gather(1, take_rows(self.brand, c)).clamp(min=0) + 1) / (n + NB)) + math.log(NB)
        no = profile.order_cat.sum(1, keepdim=True)
        order_share = profile.order_cat.gather(1, cat).clamp(min=0) / no.clamp(min=1)
        price = take_rows(self.price_ratio, c)
        user_price = profile.price.unsqueeze(1) / n.clamp(min=1.0)
        view_cos = torch.einsum("bd,bmvd->bmv", q, take_rows(self.view_emb, c)).masked_fill(~take_rows(self.view_ok, c), -1.0).max(-1).values  # (B, M)
        view_best = view_cos.masked_fill(~valid, neg).max(1, keepdim=True).values
        feats = torch.stack(
            [cos, cos - best, prefix_gap, vote, cat_lift, brand_lift, price, price * user_price, torch.log1p(n).expand_as(cos),
             take_rows(self.popularity, c), order_share, view_cos, view_cos - view_best],
            dim=-1,
        )  # (B, M, F)
        return feats.masked_fill(~valid.unsqueeze(-1), 0.0)

    def score(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, M, F) features -> (B, M) scores (higher first)."""
        x = feats * self.feature_scale
        return (self.linear(x) + self.mlp(x)).squeeze(-1)

    def forward(self, query, cand, prefix_score, profile: Profile) -> torch.Tensor:
        """Scores (B, M); -inf where ``cand`` pads."""
        s = self.score(self.features(query, cand, prefix_score, profile))
        return s.masked_fill(cand < 0, float("-inf"))


def listwise_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Listwise softmax cross-entropy: scores (B, M) (-inf pads), target weights (B, M) >= 0 -> mean over rows with a target."""
    logp = torch.log_softmax(scores, dim=1).masked_fill(~torch.isfinite(scores), 0.0)
    mass = target.sum(1)
    per_row = -(target * logp).sum(1) / mass.clamp(min=1e-12)
    has = mass > 0
    return per_row[has].mean() if has.any() else scores.sum() * 0.0
