"""Features of the MCA pre-ranker and ranker, learned from the TRAIN-split logs.

Two kinds of inputs meet here:

* **catalog facts** (:class:`Catalog`): each item's category, brand and log
  price ratio to its category median, in the row order of the recall index;
* **log statistics** (:class:`LogStats`): what users clicked and ordered in
  the train split: per-user category and brand counts, a price preference,
  per-item click-through and order rates.

:func:`pair_features` turns (query, candidate) pairs into a float32 matrix
with named columns, for serving (candidates from recall) and for training
(candidates = logged impressions). For training rows the log statistics
come from the other folds of the log (``exclude``), so a feature never
contains the label it is trained to predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Smoothing pseudo-counts: a user with few clicks stays close to the population.
USER_PRIOR = 3.0
ITEM_PRIOR = 20.0

FEATURES = (
    "sim",  # cosine(query, item): the visual match
    "sim_gap",  # best catalog cosine for this query minus this one: 0 for the nearest item
    "cat_vote",  # share of the query's nearest items in this item's category: visual category
    "user_cat_lift",  # log(user's smoothed click share of the category / population share)
    "user_brand_lift",  # same for the item's brand
    "user_price_pref",  # mean log price ratio of the user's clicks minus that of what they were shown
    "item_lpr",  # log(price / category median price)
    "price_match",  # item_lpr * user_price_pref
    "user_activity",  # log(1 + user's train clicks): how much the user features can be trusted
    "item_ctr",  # smoothed log click-through rate of the item
    "item_cvr",  # smoothed log order rate per click of the item
    "position",  # logged position at training; 0 at serving (position-bias correction)
    # what OneVision's leaf head reads that the features above do not (onevision.generative.leaf)
    "view_sim",  # best cosine of the query to one of the item's catalog views (a query photographs one view)
    "view_gap",  # best view_sim among the query's candidates minus this one
    "user_order_cat_share",  # share of the user's orders in the item's category
)


class PairCounts:
    """Sparse sums keyed by an (a, b) pair of non-negative ints; vectorised lookup (0 for absent pairs)."""

    def __init__(self, a: np.ndarray, b: np.ndarray, weights: np.ndarray, n_b: int):
        self.n_b = int(max(n_b, 1))
        keys = np.asarray(a, np.int64) * self.n_b + np.asarray(b, np.int64)
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.values = np.bincount(inverse, weights=np.asarray(weights, np.float64), minlength=len(self.keys))

    def get(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
        if len(self.keys) == 0:
            return np.zeros(a.shape)
        keys = a * self.n_b + b
        pos = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        return np.where((self.keys[pos] == keys) & (a >= 0), self.values[pos], 0.0)


@dataclass
class Catalog:
    """Catalog facts aligned to the recall index rows."""

    item_ids: np.ndarray  # (N,) int64, row order of the index
    category: np.ndarray  # (N,) int64
    brand: np.ndarray  # (N,) int64 codes into brand_names
    lpr: np.ndarray  # (N,) float32 log(price / category median)
    brand_names: np.ndarray = field(repr=False)
    views: np.ndarray | None = field(default=None, repr=False)  # (N, V, D) float32 catalog view embeddings, 0 rows pad
    view_ok: np.ndarray | None = field(default=None, repr=False)  # (N, V) bool

    def with_views(self, view_item_ids: np.ndarray, view_emb: np.ndarray, item_emb: np.ndarray, max_views: int = 8) -> Catalog:
        """The catalog with its views' embeddings (at most ``max_views`` per item; an item without one uses ``item_emb``)."""
        rows = self.rows_of(np.asarray(view_item_ids, np.int64))
        ok = rows >= 0
        rows, emb = rows[ok], np.asarray(view_emb, np.float32)[ok]
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        order = np.argsort(rows, kind="stable")
        rows, emb = rows[order], emb[order]
        slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # rank of each view within its item
        n_views = int(min(max(slot.max() + 1 if len(slot) else 1, 1), max_views))
        views = np.zeros((len(self.item_ids), n_views, emb.shape[1] if len(emb) else item_emb.shape[1]), np.float32)
        view_ok = np.zeros(views.shape[:2], bool)
        keep = slot < n_views
        views[rows[keep], slot[keep]] = emb[keep]
        view_ok[rows[keep], slot[keep]] = True
        missing = ~view_ok.any(1)
        views[missing, 0], view_ok[missing, 0] = item_emb[missing], True
        return Catalog(self.item_ids, self.category, self.brand, self.lpr, self.brand_names, views, view_ok)

    @classmethod
    def from_items(cls, items: pd.DataFrame, item_ids: np.ndarray) -> Catalog:
        item_ids = np.asarray(item_ids, np.int64)
        frame = items.set_index("item_id").reindex(item_ids)
        if frame["category"].isna().any():
            missing = item_ids[frame["category"].isna().to_numpy()][:5]
            raise ValueError(f"embedded items missing from the items table, e.g. {missing.tolist()}")
        category = frame["category"].to_numpy(np.int64)
        price = frame["price"].to_numpy(np.float64)
        median = pd.Series(price).groupby(category).transform("median").to_numpy()
        brand_names, brand = np.unique(frame["brand"].astype(str).to_numpy(), return_inverse=True)
        return cls(item_ids, category, brand.astype(np.int64), np.log(price / median).astype(np.float32), brand_names)

    @property
    def n_categories(self) -> int:
        return int(self.category.max()) + 1

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Item ids -> index rows (-1 for ids not in the catalog)."""
        order = np.argsort(self.item_ids)
        sorted_ids = np.append(self.item_ids[order], np.iinfo(np.int64).max)
        pos = np.searchsorted(sorted_ids, item_ids)
        return np.where(sorted_ids[pos] == item_ids, np.append(order, -1)[pos], -1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"item_ids": self.item_ids, "category": self.category, "brand": self.brand, "lpr": self.lpr, "brand_names": self.brand_names.astype(str)}
        if self.views is not None:
            out |= {"views": self.views, "view_ok": self.view_ok}
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Catalog:
        return cls(arrays["item_ids"], arrays["category"], arrays["brand"], arrays["lpr"], arrays["brand_names"],
                   arrays.get("views"), arrays.get("view_ok"))


def impression_log(queries: pd.DataFrame, impressions: pd.DataFrame, interactions: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """One row per shown item of the given queries: query, user, item row, position, click, order."""
    shown = impressions.merge(queries[["query_id", "user_id"]], on="query_id", how="inner")
    acts = interactions[interactions["query_id"].isin(queries["query_id"])]
    clicked = acts.loc[acts["action"] == "click", ["query_id", "item_id"]].drop_duplicates().assign(click=1.0)
    ordered = acts.loc[acts["action"] == "order", ["query_id", "item_id"]].drop_duplicates().assign(order=1.0)
    shown = shown.merge(clicked, on=["query_id", "item_id"], how="left").merge(ordered, on=["query_id", "item_id"], how="left")
    shown["item_row"] = catalog.rows_of(shown["item_id"].to_numpy(np.int64))
    shown = shown[shown["item_row"] >= 0]
    out = pd.DataFrame({
        "query_id": shown["query_id"].to_numpy(np.int64),
        "user_id": shown["user_id"].to_numpy(np.int64),
        "item_row": shown["item_row"].to_numpy(np.int64),
        "position": shown["position"].to_numpy(np.int64),
        "click": shown["click"].fillna(0.0).to_numpy(np.float64),
        "order": shown["order"].fillna(0.0).to_numpy(np.float64),
    })
    out["click"] = np.maximum(out["click"], out["order"])  # an order always has its click
    return out.sort_values(["query_id", "position"], kind="mergesort").reset_index(drop=True)


class LogStats:
    """Per-user and per-item statistics of the train-split impression log.

    Users are indexed by row (``user_row``); unknown or anonymous users get -1
    and fall back to population values (every lift 0).
    """

    def __init__(self, log: pd.DataFrame, catalog: Catalog):
        self.catalog = catalog
        self.user_ids = np.unique(log["user_id"].to_numpy(np.int64))
        u = self.user_rows(log["user_id"].to_numpy(np.int64))
        i = log["item_row"].to_numpy(np.int64)
        click, order = log["click"].to_numpy(np.float64), log["order"].to_numpy(np.float64)
        c, b, lpr = catalog.category[i], catalog.brand[i], catalog.lpr[i].astype(np.float64)
        n_users, n_items = len(self.user_ids), len(catalog.item_ids)
        n_cat, n_brand = catalog.n_categories, len(catalog.brand_names)
        self.user_clicks = np.bincount(u, weights=click, minlength=n_users)
        self.user_shown = np.bincount(u, minlength=n_users).astype(np.float64)
        self.user_click_lpr = np.bincount(u, weights=click * lpr, minlength=n_users)
        self.user_shown_lpr = np.bincount(u, weights=lpr, minlength=n_users)
        self.user_cat = PairCounts(u, c, click, n_cat)
        self.user_brand = PairCounts(u, b, click, n_brand)
        self.user_orders = np.bincount(u, weights=order, minlength=n_users)
        self.user_order_cat = PairCounts(u, c, order, n_cat)
        total_clicks = max(click.sum(), 1.0)
        # population shares, smoothed so that an unseen category/brand is not -inf
        self.cat_share = (np.bincount(c, weights=click, minlength=n_cat) + 1.0) / (total_clicks + n_cat)
        self.brand_share = (np.bincount(b, weights=click, minlength=n_brand) + 1.0) / (total_clicks + n_brand)
        self.item_shown = np.bincount(i, minlength=n_items).astype(np.float64)
        self.item_clicks = np.bincount(i, weights=click, minlength=n_items)
        self.item_orders = np.bincount(i, weights=order, minlength=n_items)
        self.global_ctr = float(click.sum() / max(len(log), 1))
        self.global_cvr = float(order.sum() / total_clicks)
        self.n_rows = len(log)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        user_ids = np.asarray(user_ids, np.int64)
        sorted_ids = np.append(self.user_ids, np.iinfo(np.int64).max)
        pos = np.searchsorted(sorted_ids, user_ids)
        return np.where((sorted_ids[pos] == user_ids) & (user_ids >= 0), pos, -1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: value for name, value in vars(self).items() if isinstance(value, np.ndarray)} | {
            "user_cat_keys": self.user_cat.keys, "user_cat_values": self.user_cat.values,
            "user_brand_keys": self.user_brand.keys, "user_brand_values": self.user_brand.values,
            "user_order_cat_keys": self.user_order_cat.keys, "user_order_cat_values": self.user_order_cat.values,
            "scalars": np.array([self.global_ctr, self.global_cvr, self.n_rows, self.user_cat.n_b, self.user_brand.n_b]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], catalog: Catalog) -> LogStats:
        self = cls.__new__(cls)
        self.catalog = catalog
        for name in ("user_ids", "user_clicks", "user_shown", "user_click_lpr", "user_shown_lpr", "cat_share",
                     "brand_share", "item_shown", "item_clicks", "item_orders"):
            setattr(self, name, arrays[name])
        self.user_orders = arrays.get("user_orders", np.zeros_like(self.user_clicks))  # absent from cascades saved before 2026-12
        ctr, cvr, n_rows, n_cat, n_brand = arrays["scalars"]
        self.global_ctr, self.global_cvr, self.n_rows = float(ctr), float(cvr), int(n_rows)
        for name, n_b in (("user_cat", n_cat), ("user_brand", n_brand), ("user_order_cat", n_cat)):
            counts = PairCounts.__new__(PairCounts)
            empty = (np.zeros(0, np.int64), np.zeros(0))
            counts.n_b, counts.keys, counts.values = int(n_b), arrays.get(f"{name}_keys", empty[0]), arrays.get(f"{name}_values", empty[1])
            setattr(self, name, counts)
        return self


@dataclass
class Exclusion:
    """What a training row's own fold contributed to the log statistics, subtracted from them (out-of-fold features).

    Leaving out only the row's own query is not enough: with the item or user
    otherwise identifiable, a leave-one-out click rate is lower exactly on the
    clicked rows, and trees learn that leak. Statistics from the other folds
    never contain the row's label. Arrays are aligned with the pair rows.
    """

    user_clicks: np.ndarray
    user_shown: np.ndarray
    user_click_lpr: np.ndarray
    user_shown_lpr: np.ndarray
    user_cat_clicks: np.ndarray  # the fold's clicks of this user in the candidate's category
    user_brand_clicks: np.ndarray
    user_orders: np.ndarray
    user_order_cat_orders: np.ndarray  # the fold's orders of this user in the candidate's category
    item_shown: np.ndarray
    item_clicks: np.ndarray
    item_orders: np.ndarray


def query_folds(query_ids: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """A seeded fold 0..n_folds-1 per query id (every impression of a query in the same fold)."""
    unique, inverse = np.unique(np.asarray(query_ids, np.int64), return_inverse=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF01D]))
    return rng.integers(0, n_folds, len(unique))[inverse]


class FoldStats:
    """The log statistics of each fold separately, to subtract a row's own fold (out-of-fold features).

    ``fold`` (n,) assigns each log row to a fold (see :func:`query_folds`).
    :meth:`exclusion` gives, for any (user, fold, candidate item) pairs, what
    that fold contributed to :class:`LogStats`, so training pairs that are not
    impressions (recall candidates) get out-of-fold features too.
    """

    def __init__(self, log: pd.DataFrame, catalog: Catalog, fold: np.ndarray):
        self.catalog = catalog
        self.n_folds = int(np.max(fold)) + 1 if len(fold) else 1
        fold = np.asarray(fold, np.int64)
        i = log["item_row"].to_numpy(np.int64)
        user_fold = log["user_id"].to_numpy(np.int64) * self.n_folds + fold
        click, order = log["click"].to_numpy(np.float64), log["order"].to_numpy(np.float64)
        lpr = catalog.lpr[i].astype(np.float64)
        ones = np.ones_like(click)
        self.user = {name: PairCounts(user_fold, np.zeros_like(fold), w, 1)
                     for name, w in (("clicks", click), ("shown", ones), ("click_lpr", click * lpr), ("shown_lpr", lpr), ("orders", order))}
        self.user_cat = PairCounts(user_fold, catalog.category[i], click, catalog.n_categories)
        self.user_brand = PairCounts(user_fold, catalog.brand[i], click, len(catalog.brand_names))
        self.user_order_cat = PairCounts(user_fold, catalog.category[i], order, catalog.n_categories)
        self.item = {name: PairCounts(i, fold, w, self.n_folds) for name, w in (("shown", ones), ("clicks", click), ("orders", order))}

    def exclusion(self, user_ids: np.ndarray, fold: np.ndarray, cand_rows: np.ndarray) -> Exclusion:
        """user_ids (Q,), fold (Q,), cand_rows (Q, n) -> the folds' contributions, (Q, 1) or (Q, n) arrays."""
        user_fold = (np.asarray(user_ids, np.int64) * self.n_folds + np.asarray(fold, np.int64))[:, None]  # (Q, 1)
        fold = np.asarray(fold, np.int64)[:, None]
        rows = np.maximum(cand_rows, 0)
        zero = np.zeros_like(user_fold)
        c, b = self.catalog.category[rows], self.catalog.brand[rows]
        return Exclusion(
            user_clicks=self.user["clicks"].get(user_fold, zero),
            user_shown=self.user["shown"].get(user_fold, zero),
            user_click_lpr=self.user["click_lpr"].get(user_fold, zero),
            user_shown_lpr=self.user["shown_lpr"].get(user_fold, zero),
            user_cat_clicks=self.user_cat.get(user_fold, c),
            user_brand_clicks=self.user_brand.get(user_fold, b),
            user_orders=self.user["orders"].get(user_fold, zero),
            user_order_cat_orders=self.user_order_cat.get(user_fold, c),
            item_shown=self.item["shown"].get(rows, fold),
            item_clicks=self.item["clicks"].get(rows, fold),
            item_orders=self.item["orders"].get(rows, fold),
        )


def pair_features(
    stats: LogStats,
    user_rows: np.ndarray,
    *,
    cand_rows: np.ndarray,
    sims: np.ndarray,
    top_sim: np.ndarray,
    neighbour_cats: np.ndarray,
    names: tuple[str, ...] = FEATURES,
    positions: np.ndarray | None = None,
    exclude: Exclusion | None = None,
    query_emb: np.ndarray | None = None,
) -> np.ndarray:
    """Features of (query, candidate) pairs -> float32 (Q, n, len(names)).

    user_rows (Q,) from :meth:`LogStats.user_rows`; cand_rows (Q, n) index rows
    (-1: empty slot, features are then meaningless and callers mask them);
    sims (Q, n) cosine similarities; top_sim (Q,) the best cosine in the
    catalog; neighbour_cats (Q, m) categories of the query's m nearest items;
    query_emb (Q, D) the aligned query embeddings (``view_sim``, ``view_gap``:
    without them or without the catalog's views, ``sim`` stands in).
    """
    cat = stats.catalog
    rows = np.maximum(cand_rows, 0)  # (Q, n)
    u = np.asarray(user_rows, np.int64)[:, None]  # (Q, 1)
    known = (u >= 0).astype(np.float64)  # (Q, 1)
    ex = exclude
    sub = (lambda name: getattr(ex, name)) if ex is not None else (lambda name: 0.0)
    uu = np.maximum(u, 0)
    c, b = cat.category[rows], cat.brand[rows]  # (Q, n)
    out = np.empty((*rows.shape, len(names)), np.float32)
    cache: dict[str, np.ndarray] = {}

    def user_clicks() -> np.ndarray:
        if "uc" not in cache:
            cache["uc"] = np.maximum(known * stats.user_clicks[uu] - sub("user_clicks"), 0.0)  # (Q, n or 1)
        return cache["uc"]

    def user_price_pref() -> np.ndarray:
        if "upp" not in cache:
            clicks = user_clicks()
            shown = np.maximum(known * stats.user_shown[uu] - sub("user_shown"), 0.0)
            click_lpr = known * stats.user_click_lpr[uu] - sub("user_click_lpr")
            shown_lpr = known * stats.user_shown_lpr[uu] - sub("user_shown_lpr")
            cache["upp"] = click_lpr / (clicks + USER_PRIOR) - shown_lpr / (shown + USER_PRIOR)
        return cache["upp"]

    def view_sim() -> np.ndarray:
        if "vs" not in cache:
            if query_emb is None or cat.views is None:
                cache["vs"] = np.asarray(sims, np.float64)
            else:
                cos = np.einsum("qd,qnvd->qnv", np.asarray(query_emb, np.float32), cat.views[rows])  # (Q, n, V)
                cache["vs"] = np.where(cat.view_ok[rows], cos, -1.0).max(axis=2)
        return cache["vs"]

    for j, name in enumerate(names):
        if name == "sim":
            value = sims
        elif name == "sim_gap":
            value = np.asarray(top_sim)[:, None] - sims
        elif name == "cat_vote":
            value = (neighbour_cats[:, None, :] == c[:, :, None]).mean(axis=2)  # (Q, n)
        elif name == "user_cat_lift":
            n_uc = np.maximum(known * stats.user_cat.get(uu, c) - sub("user_cat_clicks"), 0.0)
            share = (n_uc + USER_PRIOR * stats.cat_share[c]) / (user_clicks() + USER_PRIOR)
            value = np.log(share / stats.cat_share[c])
        elif name == "user_brand_lift":
            n_ub = np.maximum(known * stats.user_brand.get(uu, b) - sub("user_brand_clicks"), 0.0)
            share = (n_ub + USER_PRIOR * stats.brand_share[b]) / (user_clicks() + USER_PRIOR)
            value = np.log(share / stats.brand_share[b])
        elif name == "user_price_pref":
            value = user_price_pref()
        elif name == "item_lpr":
            value = cat.lpr[rows]
        elif name == "price_match":
            value = cat.lpr[rows] * user_price_pref()
        elif name == "user_activity":
            value = np.log1p(user_clicks())
        elif name == "item_ctr":
            shown = stats.item_shown[rows] - sub("item_shown")
            clicks = stats.item_clicks[rows] - sub("item_clicks")
            value = np.log((clicks + ITEM_PRIOR * stats.global_ctr) / (shown + ITEM_PRIOR))
        elif name == "item_cvr":
            clicks = stats.item_clicks[rows] - sub("item_clicks")
            orders = stats.item_orders[rows] - sub("item_orders")
            value = np.log((orders + ITEM_PRIOR * stats.global_cvr + 1e-6) / (clicks + ITEM_PRIOR))
        elif name == "view_sim":
            value = view_sim()
        elif name == "view_gap":
            vs = view_sim()
            value = np.where(cand_rows >= 0, vs, -np.inf).max(axis=1, keepdims=True) - vs
        elif name == "user_order_cat_share":
            orders = np.maximum(known * stats.user_orders[uu] - sub("user_orders"), 0.0)
            n_uoc = np.maximum(known * stats.user_order_cat.get(uu, c) - sub("user_order_cat_orders"), 0.0)
            value = n_uoc / np.maximum(orders, 1.0)
        elif name == "position":
            value = 0.0 if positions is None else positions
        else:
            raise KeyError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
        out[..., j] = np.broadcast_to(value, rows.shape)
    return out
