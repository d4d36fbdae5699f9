"""Import a catalog of your own product photos into the canonical tables.

Inputs (``onevision data import`` or ``data.source: import``):

* ``image_dir``: a folder of product photos (PNG or JPEG, any size). Photos
  are read, never modified or moved.
* ``catalog_csv``: one row per product with columns ``item_id`` (integer),
  ``image_paths`` (one or more paths relative to ``image_dir``, separated by
  ``;``), ``category`` (a name or a non-negative integer), ``brand`` and
  ``price``. An optional ``category_name`` column names integer categories.
* ``queries_csv`` (optional): a photo-search log with ``query_id``,
  ``user_id``, ``item_id`` (the product photographed), ``ts`` (ISO 8601; a
  time without a zone is read as UTC) and ``image_path``; optionally
  ``shown`` (item ids in ranked order), ``clicked`` and ``ordered`` (item ids),
  each ``;``-separated. An ordered item must also be listed as clicked.

Output: items, views, users, queries, impressions and interactions, exactly as
the demo shop produces them. Every image path must stay inside ``image_dir``
(no ``..``, no absolute path, no symlink out): anything else stops the import
with an error naming the CSV line, as does a missing CSV column. Bad *values*
do not stop it: they go through as they are so that the validate stage
quarantines the row and says why (text in a numeric column, a photo that does
not decode, a file that is missing). Decodable photos are oriented by their
EXIF tag, centre-cropped to a square, resized to ``image_size`` and converted
to grayscale (1 channel) or RGB (3), transparency flattened on white
(:func:`onevision.data.images.normalize_photo`, which serving applies to query
photos too), then stored as PNG bytes in ``image``; a
photo that does not decode keeps its raw bytes (rule ``image_decodable``), a
missing file keeps its path in ``image_path`` (rule ``image_file_missing``).

Category names map to integers in sorted name order, so the same set of names
always gets the same codes; ``category_name`` keeps the name. Users are the
distinct user ids of the query log (region unknown, ``signup_day`` the day they
were first seen relative to the first query); there are no ``user_tastes``
(those exist for simulated shoppers only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from onevision.data.coercion import coerce_table, is_null
from onevision.data.images import ImageError, encode_png, normalize_photo, resolve_image_path
from onevision.data.tables import TABLES

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ("item_id", "image_paths", "category", "brand", "price")
QUERY_COLUMNS = ("query_id", "user_id", "item_id", "ts", "image_path")
LOG_COLUMNS = ("shown", "clicked", "ordered")  # optional: ';'-separated item ids
SEPARATOR = ";"


class CatalogImportError(ValueError):
    """The catalog or query log cannot be imported; the message names the file, line and column."""


# --------------------------------------------------------------------------- photos


def prepare_photo(raw: bytes, image_size: int, image_channels: int) -> bytes:
    """PNG bytes of the normalised photo (:func:`~onevision.data.images.normalize_photo`, as serving
    sees queries); the raw bytes unchanged if they do not decode."""
    try:
        pixels = normalize_photo(raw, image_size, image_channels)
    except ImageError:
        return raw  # validation quarantines it with rule image_decodable and the decoder's reason
    return encode_png(pixels)


# --------------------------------------------------------------------------- CSV helpers


def _read_csv(path: str | Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} CSV {path} not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CatalogImportError(f"{what} CSV {path} cannot be read: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CatalogImportError(
            f"{what} CSV {path} is missing column(s): {', '.join(missing)} (needs {', '.join(required)})"
        )
    # Empty cells are missing values (validation names them not_null), not empty text.
    return frame.apply(lambda col: col.str.strip().replace("", None)).astype(object)


def _line(row: int) -> str:
    return f"line {row + 2}"  # the header is line 1


def _split(cell: Any) -> list[str]:
    if is_null(cell):
        return []
    return [part.strip() for part in str(cell).split(SEPARATOR) if part.strip()]


def _contract_dtypes(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Give each column its contract dtype when every cell converts; else keep the text for validation to judge."""
    coerced = coerce_table(name, frame)
    out = frame.reset_index(drop=True).copy()
    for column in TABLES[name].columns:
        if coerced.ok[column].all():
            out[column] = coerced.columns[column]
    return out[list(TABLES[name].columns)]


def _empty(name: str) -> pd.DataFrame:
    dtypes = {"string": "string", "object": object}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(d, d)) for c, d in TABLES[name].dtypes.items()})


class _Photos:
    """Reads photos confined to the image folder and prepares them, counting what happened."""

    def __init__(self, image_dir: str | Path, image_size: int, image_channels: int):
        self.root = Path(image_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} not found")
        self.root = self.root.resolve()
        self.size, self.channels = image_size, image_channels
        self.loaded = self.undecodable = self.missing = 0
        self.missing_where: list[str] = []  # "<csv> line N: 'path'" of the first missing photos, for the log

    def confine(self, path: str, where: str) -> Path:
        try:
            return resolve_image_path(path, self.root)
        except ImageError as exc:
            reason = str(exc) if "points outside" not in str(exc) else f"image path {path!r} points outside the image folder {self.root}"
            raise CatalogImportError(f"{where}: {reason}") from exc

    def load(self, path: str, where: str) -> tuple[bytes | None, str | None]:
        """``(image, image_path)`` of a view or query row."""
        file = self.confine(path, where)
        if not file.is_file():
            self.missing += 1
            if len(self.missing_where) < 5:
                self.missing_where.append(f"{where}: {path!r}")
            return None, path  # validation: image_file_missing
        raw = file.read_bytes()
        image = prepare_photo(raw, self.size, self.channels)
        if image is raw:
            self.undecodable += 1
        else:
            self.loaded += 1
        return image, None


# --------------------------------------------------------------------------- tables


def _categories(catalog: pd.DataFrame) -> tuple[list[Any], list[Any]]:
    """(category codes, category names): integers as given, or names coded in sorted order."""
    raw = catalog["category"].tolist()
    given = [v for v in raw if not is_null(v)]
    as_int = pd.to_numeric(pd.Series(given, dtype=object), errors="coerce")
    if len(given) and as_int.notna().all() and (as_int == as_int.round()).all():
        names = catalog["category_name"].tolist() if "category_name" in catalog.columns else raw
        return raw, names
    code = {name: i for i, name in enumerate(sorted(set(given)))}
    return [None if is_null(v) else code[v] for v in raw], raw


def _catalog_tables(catalog_csv: str | Path, photos: _Photos) -> tuple[pd.DataFrame, pd.DataFrame]:
    catalog = _read_csv(catalog_csv, CATALOG_COLUMNS, "catalog")
    if catalog.empty:
        raise CatalogImportError(f"catalog CSV {catalog_csv} has no rows")
    codes, names = _categories(catalog)
    items = pd.DataFrame({
        "item_id": catalog["item_id"],
        "category": pd.Series(codes, dtype=object),
        "category_name": pd.Series(names, dtype=object),
        "brand": catalog["brand"],
        "price": catalog["price"],
    })
    # Confine every path before reading any photo: a bad path stops the import at once.
    paths = [_split(cell) for cell in catalog["image_paths"]]
    for row, row_paths in enumerate(paths):
        for path in row_paths:
            photos.confine(path, f"catalog CSV {catalog_csv} {_line(row)} (item_id {catalog['item_id'].iloc[row]})")
    seen: set[Any] = set()
    records = []
    for row, row_paths in enumerate(tqdm(paths, desc="import photos", unit="item", disable=len(paths) < 1000, leave=False)):
        item_id = catalog["item_id"].iloc[row]
        if item_id in seen:
            # A repeated item id is quarantined (unique_key); its photos must not join the first item.
            log.warning("catalog %s: item_id %s repeats; the photos of the later row are not imported", _line(row), item_id)
            continue
        seen.add(item_id)
        for view_idx, path in enumerate(row_paths):
            image, image_path = photos.load(path, f"catalog CSV {catalog_csv} {_line(row)}")
            records.append((item_id, view_idx, image, image_path))
    views = pd.DataFrame({
        "view_id": np.arange(len(records), dtype=np.int64),
        "item_id": pd.Series([r[0] for r in records], dtype=object),
        "view_idx": np.array([r[1] for r in records], dtype=np.int64),
        "image": pd.Series([r[2] for r in records], dtype=object),
        "image_path": pd.Series([r[3] for r in records], dtype=object),
    })
    return _contract_dtypes("items", items), _contract_dtypes("views", views)


def _query_tables(queries_csv: str | Path, photos: _Photos) -> dict[str, pd.DataFrame]:
    log_ = _read_csv(queries_csv, QUERY_COLUMNS, "query log")
    where = [f"query log {queries_csv} {_line(row)} (query_id {qid})" for row, qid in enumerate(log_["query_id"])]
    for row, path in enumerate(log_["image_path"]):
        if not is_null(path):
            photos.confine(path, where[row])
    images, image_paths = [], []
    for row, path in enumerate(tqdm(log_["image_path"], desc="import query photos", unit="img", disable=len(log_) < 1000, leave=False)):
        image, image_path = (None, None) if is_null(path) else photos.load(path, where[row])
        images.append(image)
        image_paths.append(image_path)
    queries = pd.DataFrame({
        "query_id": log_["query_id"],
        "user_id": log_["user_id"],
        "item_id": log_["item_id"],
        "ts": log_["ts"],
        "image": pd.Series(images, dtype=object),
        "image_path": pd.Series(image_paths, dtype=object),
    })
    queries = _contract_dtypes("queries", queries)

    shown = log_["shown"] if "shown" in log_.columns else pd.Series([None] * len(log_), dtype=object)
    impressions = pd.DataFrame(
        [(qid, pos, item) for qid, cell in zip(log_["query_id"], shown, strict=True) for pos, item in enumerate(_split(cell))],
        columns=["query_id", "position", "item_id"],
        dtype=object,
    )
    actions = []
    for action, column in (("click", "clicked"), ("order", "ordered")):
        if column in log_.columns:
            actions += [(qid, item, action) for qid, cell in zip(log_["query_id"], log_[column], strict=True) for item in _split(cell)]
    interactions = pd.DataFrame(actions, columns=["query_id", "item_id", "action"], dtype=object)
    return {
        "users": _users(queries),
        "queries": queries,
        "impressions": _contract_dtypes("impressions", impressions) if len(impressions) else _empty("impressions"),
        "interactions": _contract_dtypes("interactions", interactions) if len(interactions) else _empty("interactions"),
    }


def _users(queries: pd.DataFrame) -> pd.DataFrame:
    """The distinct readable user ids of the log; signup_day = first day seen, relative to the first query."""
    frame = pd.DataFrame({
        "user_id": pd.to_numeric(queries["user_id"], errors="coerce"),
        "ts": pd.to_datetime(queries["ts"], utc=True, errors="coerce", format="ISO8601"),
    })
    frame = frame[frame["user_id"].notna() & (frame["user_id"] == frame["user_id"].round())]
    if frame.empty:
        return _empty("users")
    first = frame.groupby("user_id", sort=True)["ts"].min()
    if first.notna().any():
        days = (first.dt.normalize() - first.min().normalize()).dt.days.fillna(0)
    else:
        days = pd.Series(0, index=first.index)
    return pd.DataFrame({
        "user_id": first.index.to_numpy(dtype=np.int64),
        "signup_day": days.to_numpy(dtype=np.int64),
        "region": pd.array([pd.NA] * len(first), dtype="string"),
    })


def import_catalog(
    catalog_csv: str | Path,
    image_dir: str | Path,
    *,
    queries_csv: str | Path | None = None,
    image_size: int,
    image_channels: int,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Build the canonical tables from a photo folder, a catalog CSV and optionally a query log (see module doc).

    ``seed`` is accepted for the stage interface; the import draws nothing at random.
    Raises ``CatalogImportError`` (a ``ValueError``) for a missing CSV column or an
    image path outside ``image_dir``, ``FileNotFoundError`` for a missing CSV or folder.
    """
    del seed  # deterministic: same files -> same tables
    if image_channels not in (1, 3):
        raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
    photos = _Photos(image_dir, image_size, image_channels)
    items, views = _catalog_tables(catalog_csv, photos)
    if queries_csv is not None:
        events = _query_tables(queries_csv, photos)
    else:
        events = {name: _empty(name) for name in ("users", "queries", "impressions", "interactions")}
    log.info(
        "import: %d items, %d views, %d queries; photos: %d prepared, %d undecodable, %d missing",
        len(items), len(views), len(events["queries"]), photos.loaded, photos.undecodable, photos.missing,
    )
    if photos.missing:
        more = f" (and {photos.missing - len(photos.missing_where)} more)" if photos.missing > len(photos.missing_where) else ""
        log.warning(
            "import: %d photo(s) not found under %s: %s%s; validation will quarantine these rows "
            "(rule image_file_missing): add the files or fix the paths, then import again",
            photos.missing, photos.root, "; ".join(photos.missing_where), more,
        )
    return {"items": items, "views": views, **events}
