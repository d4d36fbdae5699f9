"""Drift drills: build a shifted query window so on-call can see what an alarm looks like.

The base window is fresh traffic from the same distribution as the reference:
new searches drawn by the demo machinery (``onevision.data.demo``: the same
catalog, users and tastes, another seed) when the project runs the demo shop,
else a seeded sample of the held-out test split. A shift is then applied:

* ``category-mix`` — most searches go to a few categories (season, campaign);
* ``lighting`` — photos taken in dim light (brightness x 0.6, flatter contrast);
* ``blur`` — photos out of focus (gaussian blur, radius 1.2 px);
* ``new-brand`` — a brand the catalog does not know launches at a premium
  price and takes a third of the searches.

Without a shift the same function gives the clean windows that measure the
false-alarm rate (``benchmarks/drift_monitoring.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from onevision import paths
from onevision.config import Config
from onevision.data import augment
from onevision.data.demo import build_query_images, draw_searches, source_articles
from onevision.data.images import encode_png, load_image
from onevision.data.simulator import UserSimulator
from onevision.monitoring.window import sample_rows, split_queries

SHIFT_KINDS = ("category-mix", "lighting", "blur", "new-brand")
NEW_BRAND = "Novaline"  # not a name onevision.data.demo.brand_names produces
CATEGORY_MIX_SHARE = 0.75  # share of searches that go to the surging categories
SURGE_CATEGORIES = 2
LIGHT_FACTOR, CONTRAST_FACTOR = 0.6, 0.8
BLUR_RADIUS = 1.2
NEW_BRAND_SHARE, NEW_BRAND_PRICE_FACTOR = 0.35, 2.5


def _rng(seed: int, name: str) -> np.random.Generator:
    return augment.derive_rng(seed, f"drift-drill-{name}")


def fresh_demo_queries(cfg: Config, root: Path, n: int, seed: int) -> pd.DataFrame:
    """``n`` new searches against the project's catalog, users and tastes, drawn by the demo machinery with ``seed``.

    Who searches keeps the project's user activity (each user's share of the
    project's query log: tomorrow's traffic comes from the same shoppers); what
    they search for, when, and the query photos are new draws of
    ``onevision.data.demo`` (one ``draw_searches`` call per user, so each user
    gets exactly their count). Query ids start after the project's.
    """

    folder = Path(root) / paths.VALIDATED
    items = pd.read_parquet(folder / "items.parquet")
    users = pd.read_parquet(folder / "users.parquet").reset_index(drop=True)
    tastes = pd.read_parquet(folder / "user_tastes.parquet").set_index("user_id").loc[users["user_id"]].reset_index()
    log_users = pd.read_parquet(folder / "queries.parquet", columns=["query_id", "user_id"])
    share = users["user_id"].map(log_users["user_id"].value_counts()).fillna(0).to_numpy(np.float64)
    counts = _rng(seed, "activity").multinomial(int(n), share / share.sum())  # (U,)
    sim = UserSimulator.from_tables(items, tastes, seed=int(seed))
    parts = []
    for u in np.flatnonzero(counts):
        per_user = cfg.model_copy(deep=True)
        per_user.seed = int(np.random.SeedSequence([int(seed), int(users["user_id"].iat[u])]).generate_state(1)[0])
        per_user.data.n_queries = int(counts[u])
        parts.append(draw_searches(per_user, users.iloc[[u]], tastes.iloc[[u]], items, sim))
    searches = pd.concat(parts, ignore_index=True).sort_values(["ts", "user_id"], kind="mergesort").reset_index(drop=True)
    offset = int(log_users["query_id"].max()) + 1
    searches["query_id"] = np.arange(offset, offset + len(searches), dtype=np.int64)
    fresh = cfg.model_copy(deep=True)
    fresh.seed = int(seed)
    sources, _ = source_articles(cfg)  # the project's articles: drawn with the project's seed
    images, _ = build_query_images(fresh, searches, sources, progress=False)
    return searches.assign(image=pd.Series(images, dtype=object), image_path=None)


def base_window(cfg: Config, root: Path, n: int, seed: int) -> pd.DataFrame:
    """Clean current traffic: fresh demo searches, or a seeded sample of the test split for imported catalogs."""
    if cfg.data.source == "demo":
        return fresh_demo_queries(cfg, root, n, seed)
    return sample_rows(split_queries(root, "test"), n, seed, stream=1)


def _map_images(window: pd.DataFrame, fn, image_root: str | None) -> pd.DataFrame:
    out = window.copy()
    blobs = []
    for blob, path in zip(out["image"], out.get("image_path", pd.Series([None] * len(out))), strict=True):
        pixels = load_image(blob, path if isinstance(path, str) else None, image_root)
        blobs.append(encode_png(fn(pixels)))
    out["image"] = pd.Series(blobs, dtype=object, index=out.index)
    out["image_path"] = None
    return out


def _with_catalog_columns(window: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Carry category, brand and price in the window itself (as an enriched production log would)."""
    cols = ["item_id", "category", "brand", "price"]
    return window.drop(columns=[c for c in cols[1:] if c in window.columns]).merge(items[cols], on="item_id", how="left")


def simulate_shift(kind: str, window: pd.DataFrame, items: pd.DataFrame, seed: int, image_root: str | None = None) -> pd.DataFrame:
    """Apply the ``kind`` shift to a clean window (the category mix resamples it, so pass ~3x the rows wanted)."""
    if kind not in SHIFT_KINDS:
        raise ValueError(f"unknown shift {kind!r}; kinds: {', '.join(SHIFT_KINDS)}")
    if kind == "lighting":
        return _map_images(window, lambda px: augment.contrast(augment.relight(px, LIGHT_FACTOR), CONTRAST_FACTOR), image_root)
    if kind == "blur":
        return _map_images(window, lambda px: augment.blur(px, BLUR_RADIUS), image_root)
    if kind == "category-mix":
        rng = _rng(seed, kind)
        category = window[["item_id"]].merge(items[["item_id", "category"]], on="item_id", how="left")["category"]
        present = np.sort(category.dropna().unique())
        surge = rng.choice(present, size=min(SURGE_CATEGORIES, len(present)), replace=False)
        in_surge = category.isin(surge).to_numpy()
        base = category.value_counts(normalize=True)
        share = category.map(base).to_numpy(np.float64)
        # weight = wanted share / base share per category; without replacement the surge saturates below the target
        target = np.where(in_surge, CATEGORY_MIX_SHARE / len(surge), (1 - CATEGORY_MIX_SHARE) / max(len(present) - len(surge), 1))
        weight = np.nan_to_num(target / share)
        n = max(1, len(window) // 3)
        rows = np.sort(rng.choice(len(window), size=n, replace=False, p=weight / weight.sum()))
        return window.iloc[rows].reset_index(drop=True)
    # new-brand: a share of searches is for products of a brand the catalog does not have, at premium prices
    rng = _rng(seed, kind)
    out = _with_catalog_columns(window, items)
    launched = rng.uniform(size=len(out)) < NEW_BRAND_SHARE
    next_id = int(items["item_id"].max()) + 1
    out.loc[launched, "item_id"] = np.arange(next_id, next_id + int(launched.sum()))
    out.loc[launched, "brand"] = NEW_BRAND
    out.loc[launched, "price"] = (out.loc[launched, "price"] * NEW_BRAND_PRICE_FACTOR).round(2)
    return out


def drill_window(cfg: Config, root: Path, kind: str | None, rows: int, seed: int) -> pd.DataFrame:
    """A current window of about ``rows`` queries, shifted by ``kind`` (None: clean)."""
    if kind is None:
        return base_window(cfg, root, rows, seed)
    items = pd.read_parquet(Path(root) / paths.VALIDATED / "items.parquet")
    base = base_window(cfg, root, rows * 3 if kind == "category-mix" else rows, seed)
    return simulate_shift(kind, base, items, seed, cfg.data.import_dir)
