"""The canonical tables: names, files and columns.

Demo data and imported catalogs produce exactly these tables (Parquet, one
file per table under a dataset folder). The pandera schemas in
``onevision.data.schemas`` enforce them; this module is the short list that
every stage agrees on.

Images are stored either as encoded bytes (PNG/JPEG) in the ``image`` column
or as a path relative to the dataset's image root in ``image_path``; exactly
one of the two is set per row, and ``onevision.data.images.load_image`` reads
both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from onevision import atomic


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, str]  # column -> pandas dtype as written to Parquet
    key: tuple[str, ...]
    doc: str

    @property
    def filename(self) -> str:
        return f"{self.name}.parquet"


ITEMS = Table(
    "items",
    {
        "item_id": "int64",
        "category": "int64",  # 0..n_categories-1
        "category_name": "string",
        "brand": "string",
        "price": "float64",  # > 0, finite
    },
    key=("item_id",),
    doc="One row per product.",
)

VIEWS = Table(
    "views",
    {
        "view_id": "int64",
        "item_id": "int64",  # -> items.item_id
        "view_idx": "int64",  # 0..views_per_item-1 within the item
        "image": "object",  # encoded PNG/JPEG bytes, or None when image_path is set
        "image_path": "object",  # str relative to the image root, or None
    },
    key=("view_id",),
    doc="Catalog photos; every item has at least one.",
)

USERS = Table(
    "users",
    {
        "user_id": "int64",
        "signup_day": "int64",  # day of sign-up relative to the log start (negative: before it)
        "region": "string",
    },
    key=("user_id",),
    doc="Observable user features (the simulator's latent tastes live in user_tastes).",
)

USER_TASTES = Table(
    "user_tastes",
    {
        "user_id": "int64",
        "category_affinity": "object",  # list[float], one per category, sums to 1
        "favorite_brands": "object",  # list[str]
        "brand_weight": "float64",  # >= 0: how much favourite brands lift the appeal
        "price_sensitivity": "float64",  # >= 0: how much price above the category median hurts
    },
    key=("user_id",),
    doc="Ground-truth tastes of simulated users: read by the simulator only, never by models.",
)

QUERIES = Table(
    "queries",
    {
        "query_id": "int64",
        "user_id": "int64",  # -> users.user_id
        "item_id": "int64",  # -> items.item_id: the product that was photographed
        "ts": "datetime64[ns, UTC]",
        "image": "object",
        "image_path": "object",
    },
    key=("query_id",),
    doc="Photo-search sessions: who searched, when, with which photo of which product.",
)

IMPRESSIONS = Table(
    "impressions",
    {
        "query_id": "int64",  # -> queries.query_id
        "position": "int64",  # 0-based rank shown
        "item_id": "int64",  # -> items.item_id
    },
    key=("query_id", "position"),
    doc="The ranked list the logging policy showed for each query.",
)

INTERACTIONS = Table(
    "interactions",
    {
        "query_id": "int64",  # (query_id, item_id) -> impressions
        "item_id": "int64",
        "action": "string",  # 'click' | 'order'; an order always has its click
    },
    key=("query_id", "item_id", "action"),
    doc="Clicks and orders on shown items.",
)

TABLES: dict[str, Table] = {
    t.name: t for t in (ITEMS, VIEWS, USERS, USER_TASTES, QUERIES, IMPRESSIONS, INTERACTIONS)
}
# Tables every dataset must have; user_tastes exists for simulated data only.
REQUIRED_TABLES = ("items", "views", "users", "queries", "impressions", "interactions")


def read_tables(folder: str | Path, names: tuple[str, ...] | None = None) -> dict[str, pd.DataFrame]:
    """Read the tables present in ``folder`` (all required ones must exist)."""
    folder = Path(folder)
    out: dict[str, pd.DataFrame] = {}
    for name in names or tuple(TABLES):
        path = folder / TABLES[name].filename
        if path.exists():
            out[name] = pd.read_parquet(path)
        elif name in REQUIRED_TABLES:
            raise FileNotFoundError(f"table '{name}' missing: expected {path}")
    return out


def write_tables(tables: dict[str, pd.DataFrame], folder: str | Path) -> dict[str, Path]:
    """Write tables as Parquet, deterministically (same frames -> same bytes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in tables.items():
        path = folder / TABLES[name].filename
        with atomic.atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False, compression="zstd")
        paths[name] = path
    return paths
