"""The demo shop: Fashion-MNIST products, simulated shoppers, a logged search log.

:func:`build_demo` turns the effective config into the seven canonical tables
of :mod:`onevision.data.tables`, deterministically (same config and seed ->
identical frames -> byte-identical Parquet files):

1. **items** — ``n_items`` Fashion-MNIST articles drawn without replacement;
   category = the article's class. Each brand has a category focus
   (Dirichlet), a size and a price tier; an item's brand is drawn from the
   brands weighted by size x focus on its category, and its price is
   lognormal around ``category base x brand tier``, in cents, always > 0.
2. **views** — ``views_per_item`` catalog photos per item: view 0 is the
   clean article, the others mild augmentations (:data:`CATALOG_STRENGTH`).
3. **users / user_tastes** — region, sign-up day and latent tastes: a
   concentrated Dirichlet category affinity, 1-3 favourite brands (leaning to
   brands that sell the liked categories), a brand weight and a price
   sensitivity.
4. **queries** — users issue searches in proportion to a lognormal activity
   over ``days`` days from :data:`LOG_START`; the photographed product is drawn
   leaning to the user's tastes (category from the affinity, then item by the
   simulator's taste logit), and the query photo is a *hard* augmentation of
   that product's article (``QUERY_STRENGTH x data.query_difficulty``).
5. **impressions** — the incumbent production system as *logging policy*
   (:mod:`onevision.data.logging_policy`):
   nearest neighbours of the query photo in a cheap pixel-PCA space over the
   item's catalog views (recall), re-ranked with noise, plus a few popular
   items at random slots. The photographed product is usually, not always,
   shown, at varied positions.
6. **interactions** — clicks and orders drawn from :class:`UserSimulator`
   for the shown lists.

Every random draw comes from its own stream ``derive_rng(seed, name, *ids)``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from onevision.config import Config
from onevision.data.augment import CATALOG_STRENGTH, QUERY_STRENGTH, augment, derive_rng
from onevision.data.fashion_mnist import CLASS_NAMES, N_CLASSES, load_fashion_mnist
from onevision.data.images import encode_png
from onevision.data.logging_policy import POLICY_GRID, logging_policy, photo_difficulty, policy_features
from onevision.data.simulator import UserSimulator
from onevision.data.tables import TABLES

log = logging.getLogger(__name__)

LOG_START = pd.Timestamp("2026-01-01T00:00:00Z")  # day 0 of the simulated query log
SECONDS_PER_DAY = 86_400

# Typical shelf price per Fashion-MNIST class (EUR), before brand tier and item noise.
CATEGORY_BASE_PRICE = np.array([15.0, 40.0, 35.0, 45.0, 90.0, 30.0, 30.0, 65.0, 50.0, 80.0])
PRICE_TIERS = (("budget", 0.6, 0.35), ("mid", 1.0, 0.45), ("premium", 1.8, 0.20))  # name, multiplier, share
REGIONS = (("north", 0.30), ("south", 0.25), ("east", 0.20), ("west", 0.15), ("central", 0.10))

AFFINITY_CONCENTRATION = 0.3  # Dirichlet alpha per category: most users love 1-3 categories
BRAND_FOCUS_CONCENTRATION = 0.4  # Dirichlet alpha of a brand's category mix
EXPLORE_SHARE = 0.1  # share of searches for a category drawn uniformly, not from the affinity
NEW_USER_SHARE = 0.15  # users who sign up during the log (they search only afterwards)

CHUNK = 2048  # photos per batch of augmentation and encoding


# --------------------------------------------------------------------------- helpers


def _rng(cfg: Config, name: str, *ids: int) -> np.random.Generator:
    return derive_rng(cfg.seed, name, *ids)


def _progress(iterable, progress: bool, desc: str, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, disable=not progress, leave=False, unit="batch")


def brand_names(n: int) -> list[str]:
    """``n`` distinct, pronounceable, seed-independent brand names."""
    heads = ("Nor", "Vel", "Kai", "Lum", "Ast", "Bel", "Cor", "Dax", "Eno", "Fyr", "Gal", "Hal")
    tails = ("a", "io", "en", "ora", "ix", "um", "eth", "ano", "is", "e")
    names = [h + t for t in tails for h in heads]
    return [names[i] if i < len(names) else f"{names[i % len(names)]} {i // len(names) + 1}" for i in range(n)]


def source_articles(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The articles behind the items: ``(images (N, S, S[, 3]) uint8, labels (N,))`` in item-id order."""
    d = cfg.data
    images, labels = load_fashion_mnist(d.fashion_mnist_dir)
    picked = _rng(cfg, "articles").choice(len(images), size=d.n_items, replace=False)
    x, y = images[picked], labels[picked]
    if d.image_size != x.shape[1]:
        x = np.stack([np.asarray(Image.fromarray(a).resize((d.image_size, d.image_size), Image.Resampling.BILINEAR)) for a in x])
    if d.image_channels == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    return np.ascontiguousarray(x, dtype=np.uint8), y.astype(np.int64)


def _render(sources: np.ndarray, keys: list[tuple[int, ...]], cfg: Config, kind: str, strength: float):
    """Augment + PNG-encode a batch: ``(list of PNG bytes, pooled policy features)``."""
    pixels = np.stack([augment(img, _rng(cfg, kind, *key), strength) for img, key in zip(sources, keys, strict=True)])
    return [encode_png(p) for p in pixels], policy_features(pixels)


# --------------------------------------------------------------------------- items


def build_items(cfg: Config, labels: np.ndarray) -> pd.DataFrame:
    """Items with category, brand (focus x size x price tier) and price."""
    d = cfg.data
    rng = _rng(cfg, "brands")
    names = np.array(brand_names(d.n_brands), dtype=object)
    focus = rng.dirichlet(np.full(N_CLASSES, BRAND_FOCUS_CONCENTRATION), size=d.n_brands)  # (B, C)
    size = rng.lognormal(0.0, 0.7, size=d.n_brands)  # (B,)
    tier = rng.choice(len(PRICE_TIERS), size=d.n_brands, p=[t[2] for t in PRICE_TIERS])  # (B,)
    brand_price = np.array([t[1] for t in PRICE_TIERS])[tier] * rng.lognormal(0.0, 0.1, size=d.n_brands)  # (B,)

    # P(brand | category) ∝ size x focus, floored so every category has every brand now and then
    weight = size[:, None] * (focus + 0.02)  # (B, C)
    p_brand = weight / weight.sum(axis=0, keepdims=True)
    rng_items = _rng(cfg, "items")
    brand = np.empty(len(labels), dtype=np.int64)
    for c in range(N_CLASSES):
        rows = np.flatnonzero(labels == c)
        brand[rows] = rng_items.choice(d.n_brands, size=len(rows), p=p_brand[:, c])
    noise = rng_items.lognormal(0.0, 0.25, size=len(labels))
    price = np.round(CATEGORY_BASE_PRICE[labels] * brand_price[brand] * noise, 2)
    price = np.maximum(price, 0.5)
    return pd.DataFrame(
        {
            "item_id": np.arange(len(labels), dtype=np.int64),
            "category": labels.astype(np.int64),
            "category_name": pd.array(np.array(CLASS_NAMES, dtype=object)[labels], dtype="string"),
            "brand": pd.array(names[brand], dtype="string"),
            "price": price.astype(np.float64),
        }
    )


def build_views(cfg: Config, sources: np.ndarray, progress: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """Catalog photos (view 0 clean, others mild) and the logging policy's per-item mean features."""
    d = cfg.data
    n, v = len(sources), d.views_per_item
    images: list[bytes] = []
    features = np.zeros((n, POLICY_GRID * POLICY_GRID), dtype=np.float32)
    starts = range(0, n, CHUNK)
    for start in _progress(starts, progress, "catalog views", len(starts)):
        batch = sources[start : start + CHUNK]
        ids = range(start, start + len(batch))
        per_view = [([encode_png(a) for a in batch], policy_features(batch))]
        for view_idx in range(1, v):
            per_view.append(_render(batch, [(i, view_idx) for i in ids], cfg, "catalog", CATALOG_STRENGTH))
        for row in range(len(batch)):
            images.extend(per_view[j][0][row] for j in range(v))
        features[start : start + len(batch)] = np.mean([f for _, f in per_view], axis=0)
    item_id = np.repeat(np.arange(n, dtype=np.int64), v)
    view_idx = np.tile(np.arange(v, dtype=np.int64), n)
    views = pd.DataFrame(
        {
            "view_id": item_id * v + view_idx,
            "item_id": item_id,
            "view_idx": view_idx,
            "image": pd.Series(images, dtype=object),
            "image_path": pd.Series([None] * len(images), dtype=object),
        }
    )
    return views, features


# --------------------------------------------------------------------------- users


def build_users(cfg: Config, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Observable users (region, sign-up day) and their latent tastes."""
    d = cfg.data
    rng = _rng(cfg, "users")
    n = d.n_users
    user_id = np.arange(n, dtype=np.int64)
    region = rng.choice(len(REGIONS), size=n, p=[r[1] for r in REGIONS])
    new = rng.uniform(size=n) < NEW_USER_SHARE
    signup = np.where(new, rng.integers(0, d.days - 1, size=n), rng.integers(-720, 0, size=n)).astype(np.int64)
    users = pd.DataFrame(
        {
            "user_id": user_id,
            "signup_day": signup,
            "region": pd.array(np.array([r[0] for r in REGIONS], dtype=object)[region], dtype="string"),
        }
    )

    rng = _rng(cfg, "tastes")
    affinity = rng.dirichlet(np.full(N_CLASSES, AFFINITY_CONCENTRATION), size=n)  # (U, C)
    affinity = np.maximum(affinity, 1e-9)
    affinity /= affinity.sum(axis=1, keepdims=True)
    # favourite brands lean to brands that sell what the user likes: P(b) ∝ sum_c a_c * share of b in c
    brands = items["brand"].astype(str).to_numpy()
    names, brand_code = np.unique(brands, return_inverse=True)
    share = np.zeros((len(names), N_CLASSES))  # (B, C) share of category c's items made by brand b
    np.add.at(share, (brand_code, items["category"].to_numpy()), 1.0)
    share /= np.maximum(share.sum(axis=0, keepdims=True), 1.0)
    p_fav = affinity @ share.T + 1e-3  # (U, B)
    p_fav /= p_fav.sum(axis=1, keepdims=True)
    n_fav = np.minimum(1 + rng.binomial(2, 0.4, size=n), len(names))
    favorites = [sorted(rng.choice(names, size=k, replace=False, p=p).tolist()) for k, p in zip(n_fav, p_fav, strict=True)]
    tastes = pd.DataFrame(
        {
            "user_id": user_id,
            "category_affinity": pd.Series([row.tolist() for row in affinity], dtype=object),
            "favorite_brands": pd.Series(favorites, dtype=object),
            "brand_weight": rng.uniform(0.5, 2.0, size=n),
            "price_sensitivity": rng.lognormal(0.0, 0.5, size=n),
        }
    )
    return users, tastes


# --------------------------------------------------------------------------- queries


def draw_searches(cfg: Config, users: pd.DataFrame, tastes: pd.DataFrame, items: pd.DataFrame, sim: UserSimulator) -> pd.DataFrame:
    """Who searched when for which product: ``(query_id, user_id, item_id, ts)`` ordered by time."""
    d = cfg.data
    n_users = len(users)
    activity = _rng(cfg, "activity").lognormal(0.0, 1.0, size=n_users)
    counts = _rng(cfg, "activity-counts").multinomial(d.n_queries, activity / activity.sum())
    item_ids = items["item_id"].to_numpy()
    category = items["category"].to_numpy()
    by_category = [np.flatnonzero(category == c) for c in range(N_CLASSES)]
    signup = users["signup_day"].to_numpy()
    affinity = np.stack([np.asarray(a) for a in tastes["category_affinity"]])
    present = np.array([len(rows) > 0 for rows in by_category])
    active = np.flatnonzero(counts)
    parts = []
    for block in np.array_split(active, max(1, len(active) // 256)):
        taste = sim.taste_matrix(users["user_id"].to_numpy()[block], item_ids)  # (b, N)
        for row, u in enumerate(block):
            rng = _rng(cfg, "searches", int(u))
            k = int(counts[u])
            first_day = max(0, int(signup[u]))
            seconds = rng.integers(first_day * SECONDS_PER_DAY, d.days * SECONDS_PER_DAY, size=k)
            p_cat = np.where(present, (1 - EXPLORE_SHARE) * affinity[u] + EXPLORE_SHARE / N_CLASSES, 0.0)
            cats = rng.choice(N_CLASSES, size=k, p=p_cat / p_cat.sum())
            targets = np.empty(k, dtype=np.int64)
            for c in np.unique(cats):
                rows = by_category[c]
                w = np.exp(taste[row, rows] - taste[row, rows].max())
                where = np.flatnonzero(cats == c)
                targets[where] = item_ids[rng.choice(rows, size=len(where), p=w / w.sum())]
            parts.append((np.full(k, u, dtype=np.int64), targets, seconds))
    user = np.concatenate([p[0] for p in parts])
    target = np.concatenate([p[1] for p in parts])
    seconds = np.concatenate([p[2] for p in parts])
    order = np.lexsort((np.arange(len(user)), user, seconds))  # by time, then user, then draw order
    ts = LOG_START + pd.to_timedelta(seconds[order], unit="s")
    return pd.DataFrame(
        {
            "query_id": np.arange(len(order), dtype=np.int64),
            "user_id": users["user_id"].to_numpy()[user[order]],
            "item_id": target[order],
            "ts": pd.DatetimeIndex(ts).as_unit("ns"),
        }
    )


def build_query_images(cfg: Config, searches: pd.DataFrame, sources: np.ndarray, progress: bool) -> tuple[list[bytes], np.ndarray]:
    """Hard augmentations of each photographed article: ``(PNG bytes, pooled policy features (Q, D))``."""
    strength = QUERY_STRENGTH * cfg.data.query_difficulty
    qid = searches["query_id"].to_numpy()
    target = searches["item_id"].to_numpy()
    images: list[bytes] = []
    features = np.zeros((len(qid), POLICY_GRID * POLICY_GRID), dtype=np.float32)
    starts = range(0, len(qid), CHUNK)
    for start in _progress(starts, progress, "query photos", len(starts)):
        sl = slice(start, start + CHUNK)
        pngs, feats = _render(sources[target[sl]], [(int(q),) for q in qid[sl]], cfg, "query", strength)
        images.extend(pngs)
        features[sl] = feats
    return images, features


# --------------------------------------------------------------------------- assembly


def _typed(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in the canonical order with the canonical dtypes."""
    columns = TABLES[name].dtypes
    out = frame[list(columns)].reset_index(drop=True)
    for col, dtype in columns.items():
        if dtype == "string":
            out[col] = out[col].astype(pd.StringDtype())
        elif dtype != "object" and str(out[col].dtype) != dtype:
            out[col] = out[col].astype(dtype)
    return out


def build_demo(cfg: Config, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Build the demo dataset: all seven canonical tables, deterministic in ``cfg`` (and its seed)."""
    d = cfg.data
    if d.source != "demo":
        raise ValueError(f"build_demo needs data.source=demo, got {d.source!r}")
    sources, labels = source_articles(cfg)
    items = build_items(cfg, labels)
    views, item_features = build_views(cfg, sources, progress)
    users, tastes = build_users(cfg, items)
    sim = UserSimulator.from_tables(items, tastes, seed=cfg.seed)

    searches = draw_searches(cfg, users, tastes, items, sim)
    query_images, query_features = build_query_images(cfg, searches, sources, progress)
    queries = searches.assign(image=pd.Series(query_images, dtype=object), image_path=pd.Series([None] * len(searches), dtype=object))

    # popularity of the policy's promoted items: brand reach x item luck
    brand_size = items["brand"].map(items["brand"].value_counts()).to_numpy(np.float64)
    popularity = brand_size * _rng(cfg, "popularity").lognormal(0.0, 1.0, size=len(items))
    popularity /= popularity.sum()
    targets = queries["item_id"].to_numpy()  # item ids are item row indices in the demo
    difficulty = photo_difficulty(query_features, sources, targets)
    shown = logging_policy(
        cfg, item_features, query_features=query_features, targets=targets, difficulty=difficulty, popularity=popularity, progress=progress
    )  # (Q, K)
    q, k = shown.shape
    impressions = pd.DataFrame(
        {
            "query_id": np.repeat(queries["query_id"].to_numpy(), k),
            "position": np.tile(np.arange(k, dtype=np.int64), q),
            "item_id": shown.reshape(-1),
        }
    )

    clicks, orders = sim.sample(
        queries["user_id"].to_numpy(), queries["item_id"].to_numpy(), shown, rng=_rng(cfg, "interactions")
    )
    qi, pos = np.nonzero(clicks | orders)  # row-major: by query, then position
    act = np.concatenate([np.zeros(len(qi), dtype=np.int64), np.ones(int(orders[qi, pos].sum()), dtype=np.int64)])
    oq, opos = qi[orders[qi, pos]], pos[orders[qi, pos]]
    all_q = np.concatenate([qi, oq])
    all_pos = np.concatenate([pos, opos])
    order = np.lexsort((act, all_pos, all_q))
    interactions = pd.DataFrame(
        {
            "query_id": queries["query_id"].to_numpy()[all_q[order]],
            "item_id": shown[all_q[order], all_pos[order]],
            "action": np.array(["click", "order"], dtype=object)[act[order]],
        }
    )
    tables = {
        "items": items,
        "views": views,
        "users": users,
        "user_tastes": tastes,
        "queries": queries,
        "impressions": impressions,
        "interactions": interactions,
    }
    tables = {name: _typed(name, frame) for name, frame in tables.items()}
    log.info("demo dataset: %s", ", ".join(f"{n}={len(f)}" for n, f in tables.items()))
    return tables
