"""The canonical tables: names, files and columns, each column declared once.

Demo data and imported catalogs produce exactly these tables (Parquet, one
file per table under a dataset folder). Every column is declared here, once:
its dtype, the rule its values keep and whether it may be null;
``onevision.data.schemas`` builds the pandera schemas from these declarations
and ``onevision.data.coercion`` converts raw cells to the dtypes.

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
class Column:
    """One column of the contract: its dtype as written to Parquet, the rule its values keep (a value rule of
    ``onevision.data.schemas.RULES``; ``allowed``: the only values a text column may hold) and whether it may be null."""

    dtype: str
    rule: str | None = None
    nullable: bool = False
    allowed: tuple[str, ...] = ()


ID = Column("int64", "non_negative")  # an identifier (or a reference to one)


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, Column]
    key: tuple[str, ...]
    doc: str

    @property
    def filename(self) -> str:
        return f"{self.name}.parquet"

    @property
    def dtypes(self) -> dict[str, str]:
        """Column -> pandas dtype as written to Parquet, in contract order."""
        return {name: column.dtype for name, column in self.columns.items()}


ITEMS = Table(
    "items",
    {
        "item_id": ID,
        "category": Column("int64", "non_negative"),  # 0..n_categories-1
        "category_name": Column("string"),
        "brand": Column("string"),
        "price": Column("float64", "positive_finite"),
    },
    key=("item_id",),
    doc="One row per product.",
)

VIEWS = Table(
    "views",
    {
        "view_id": ID,
        "item_id": ID,  # -> items.item_id
        "view_idx": Column("int64", "non_negative"),  # 0..views_per_item-1 within the item
        "image": Column("object", nullable=True),  # encoded PNG/JPEG bytes, or None when image_path is set
        "image_path": Column("object", nullable=True),  # str relative to the image root, or None
    },
    key=("view_id",),
    doc="Catalog photos; every item has at least one.",
)

USERS = Table(
    "users",
    {
        "user_id": ID,
        "signup_day": Column("int64"),  # day of sign-up relative to the log start (negative: before it)
        "region": Column("string", nullable=True),  # unknown for imported catalogs
    },
    key=("user_id",),
    doc="Observable user features (the simulator's latent tastes live in user_tastes).",
)

USER_TASTES = Table(
    "user_tastes",
    {
        "user_id": ID,
        "category_affinity": Column("object", "affinity_distribution"),  # list[float], one per category, sums to 1
        "favorite_brands": Column("object"),  # list[str]
        "brand_weight": Column("float64", "non_negative_finite"),  # how much favourite brands lift the appeal
        "price_sensitivity": Column("float64", "non_negative_finite"),  # how much price above the category median hurts
    },
    key=("user_id",),
    doc="Ground-truth tastes of simulated users: read by the simulator only, never by models.",
)

QUERIES = Table(
    "queries",
    {
        "query_id": ID,
        "user_id": ID,  # -> users.user_id
        "item_id": ID,  # -> items.item_id: the product that was photographed
        "ts": Column("datetime64[ns, UTC]"),
        "image": Column("object", nullable=True),
        "image_path": Column("object", nullable=True),
    },
    key=("query_id",),
    doc="Photo-search sessions: who searched, when, with which photo of which product.",
)

IMPRESSIONS = Table(
    "impressions",
    {
        "query_id": ID,  # -> queries.query_id
        "position": Column("int64", "non_negative"),  # 0-based rank shown
        "item_id": ID,  # -> items.item_id
    },
    key=("query_id", "position"),
    doc="The ranked list the logging policy showed for each query.",
)

ACTIONS = ("click", "order")  # the values of interactions.action

INTERACTIONS = Table(
    "interactions",
    {
        "query_id": ID,  # (query_id, item_id) -> impressions
        "item_id": ID,
        "action": Column("string", allowed=ACTIONS),  # an order always has its click
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
