"""A tiny synthetic shop for the drift monitor's tests: the data of ``build_project(root, "synthetic")``.

No Fashion-MNIST, encoder or DVC needed: five product categories drawn as
simple shapes (square, disc, stripes, bar, ring) on 28x28 grey photos, a few
brands, users and a query log, written as the tables a project root holds
after prepare -> validate -> split. The monitor then runs with its pixel
fallback embedding::

    root = build_project(tmp_path / "proj", "synthetic").root  # tests/support/projects.py
    cfg = load_config(root / "params.yaml")
    summary = run_drift_check(cfg, root, current=synthetic_window(root, 400, seed=7))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from onevision import paths
from onevision.data.images import encode_png

N_CATEGORIES, N_ITEMS, N_BRANDS, N_USERS = 5, 60, 6, 50
SIDE = 28
REGIONS = ("north", "south", "east")
START = pd.Timestamp("2026-01-01T00:00:00Z")
# its params.yaml: the Config fields' defaults (not the repository's params.yaml) but for these
PARAMS = {
    "profile": "default",
    "seed": 0,
    "data": {"image_size": SIDE, "image_channels": 1},
    "drift": {"reference_rows": 800, "min_rows": 50, "embedding_components": 8},
    "profiles": {},
    "overrides": {},
}


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, sum(map(ord, stream))]))


def render(category: int, rng: np.random.Generator) -> np.ndarray:
    """One 28x28 uint8 photo of a product of ``category``: its shape, jittered, lit and noisy."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    cx, cy = SIDE / 2 + rng.uniform(-3, 3), SIDE / 2 + rng.uniform(-3, 3)
    size = rng.uniform(6, 10)
    if category == 0:
        mask = (np.abs(xx - cx) < size) & (np.abs(yy - cy) < size)
    elif category == 1:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < size**2
    elif category == 2:
        mask = ((yy // 3) % 2 == 0) & (np.abs(xx - cx) < size)
    elif category == 3:
        mask = np.abs(xx - cx) < size / 3
    else:
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        mask = (r2 < size**2) & (r2 > (size / 2) ** 2)
    img = mask * rng.uniform(150, 250) + rng.normal(0, 12, size=(SIDE, SIDE))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _items(seed: int) -> pd.DataFrame:
    rng = _rng(seed, "items")
    category = np.arange(N_ITEMS) % N_CATEGORIES
    brand = rng.integers(0, N_BRANDS, size=N_ITEMS)
    price = np.round(20.0 * (1 + category) * rng.lognormal(0, 0.3, size=N_ITEMS), 2)
    return pd.DataFrame(
        {
            "item_id": np.arange(N_ITEMS, dtype=np.int64),
            "category": category.astype(np.int64),
            "category_name": pd.array([f"shape{c}" for c in category], dtype="string"),
            "brand": pd.array([f"Brand{b}" for b in brand], dtype="string"),
            "price": price,
        }
    )


def _users(seed: int) -> pd.DataFrame:
    rng = _rng(seed, "users")
    return pd.DataFrame(
        {
            "user_id": np.arange(N_USERS, dtype=np.int64),
            "signup_day": rng.integers(-300, 0, size=N_USERS).astype(np.int64),
            "region": pd.array(rng.choice(REGIONS, size=N_USERS, p=[0.5, 0.3, 0.2]), dtype="string"),
        }
    )


def queries(items: pd.DataFrame, n: int, seed: int, first_id: int = 0, days: int = 20) -> pd.DataFrame:
    """``n`` searches: uniform users, a fixed category mix, photos rendered from each item's shape."""
    rng = _rng(seed, "queries")
    p_cat = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    category = rng.choice(N_CATEGORIES, size=n, p=p_cat)
    by_cat = [items.loc[items["category"] == c, "item_id"].to_numpy() for c in range(N_CATEGORIES)]
    item_id = np.array([rng.choice(by_cat[c]) for c in category], dtype=np.int64)
    seconds = np.sort(rng.integers(0, days * 86_400, size=n))
    return pd.DataFrame(
        {
            "query_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "user_id": rng.integers(0, N_USERS, size=n).astype(np.int64),
            "item_id": item_id,
            "ts": pd.DatetimeIndex(START + pd.to_timedelta(seconds, unit="s")).as_unit("ns"),
            "image": pd.Series([encode_png(render(int(c), rng)) for c in category], dtype=object),
            "image_path": pd.Series([None] * n, dtype=object),
        }
    )


def write_shop(root: Path, n_queries: int = 1200, seed: int = 0) -> None:
    """Write data/validated/{items,users,queries}.parquet and data/splits/assignment.parquet under ``root``
    (its params.yaml, :data:`PARAMS`, is the project builder's to write)."""
    root = Path(root)
    (root / paths.VALIDATED).mkdir(parents=True, exist_ok=True)
    (root / paths.SPLITS).mkdir(parents=True, exist_ok=True)
    items = _items(seed)
    log = queries(items, n_queries, seed)
    items.to_parquet(root / paths.VALIDATED / "items.parquet", index=False)
    _users(seed).to_parquet(root / paths.VALIDATED / "users.parquet", index=False)
    log.to_parquet(root / paths.VALIDATED / "queries.parquet", index=False)
    n_test = n_queries // 5
    split = np.array(["train"] * (n_queries - 2 * n_test) + ["val"] * n_test + ["test"] * n_test)
    pd.DataFrame({"query_id": log["query_id"], "user_id": log["user_id"], "ts": log["ts"], "split": pd.array(split, dtype="string")}).to_parquet(
        root / paths.SPLITS / "assignment.parquet", index=False
    )


def synthetic_window(root: Path, n: int, seed: int) -> pd.DataFrame:
    """Fresh traffic from the same distribution as the project's log (another seed, new query ids)."""
    items = pd.read_parquet(Path(root) / paths.VALIDATED / "items.parquet")
    return queries(items, n, seed=seed + 1, first_id=1_000_000 + seed * 10_000)
