"""Validate a dataset: every bad row goes to quarantine with the rule it broke, never silently away.

:func:`validate_tables` runs four layers over the canonical tables and adds
every failure it finds to one quarantine table:

1. **schema** (``coercion.py``, ``schemas.py``), per table: required columns (a missing one
   rejects the whole table), dtypes converted cell by cell, non-null, ranges,
   allowed values, unique keys, exactly one of ``image`` / ``image_path``;
2. **images** (``check_images``): every view and query image decodes
   (PNG/JPEG, bounded pixel count; paths confined to ``image_root``) to
   ``image_size`` x ``image_size`` pixels with ``image_channels`` channels;
3. **references**, against every row of the parent table: a view's and a
   query's item exists, a query's user exists, an impression's query and item
   exist, every item has a view, a click or order was on a shown item, an order
   has its click;
4. **cascade**: a row whose parent row was quarantined follows it (rule
   ``parent_quarantined:<parent table>``), and an item whose every view was
   quarantined is quarantined too, until nothing changes.

The input frames are never modified. The result (``quarantine.py``): ``clean``
holds the rows that passed, with the contract dtypes, ``quarantine`` the rows
that did not, with their rules. A table fails when its quarantined share exceeds
``max_bad_fraction`` or when it failed as a whole (a missing column); a table
that failed as a whole is not used to check the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from onevision.data.coercion import (
    Coerced,
    coerce_table,
    failures_frame,
    has_image_bytes,
    has_image_path,
    missing_columns,
    short_repr,
)
from onevision.data.images import ImageError, decode_image, resolve_image_path
from onevision.data.quarantine import PARENT_QUARANTINED, QUARANTINE_COLUMNS, TableCounts, ValidationResult
from onevision.data.schemas import schema_failures
from onevision.data.tables import REQUIRED_TABLES, TABLES, read_tables

log = logging.getLogger(__name__)

IMAGE_TABLES = ("views", "queries")
PROGRESS_MIN_IMAGES = 10_000  # show a progress bar for image checks at least this long


@dataclass(frozen=True)
class _Link:
    """Rows of ``child`` whose ``columns`` must match a row of ``parent`` (same column names)."""

    child: str
    columns: tuple[str, ...]
    parent: str
    unknown_rule: str
    child_action: str | None = None  # interactions only: the link holds for rows with this action
    parent_action: str | None = None


LINKS = (
    _Link("views", ("item_id",), "items", "unknown_item"),
    _Link("queries", ("user_id",), "users", "unknown_user"),
    _Link("queries", ("item_id",), "items", "unknown_item"),
    _Link("user_tastes", ("user_id",), "users", "unknown_user"),
    _Link("impressions", ("query_id",), "queries", "unknown_query"),
    _Link("impressions", ("item_id",), "items", "unknown_item"),
    _Link("interactions", ("query_id", "item_id"), "impressions", "click_on_item_not_shown", child_action="click"),
    _Link("interactions", ("query_id", "item_id"), "impressions", "order_on_item_not_shown", child_action="order"),
    _Link("interactions", ("query_id", "item_id"), "interactions", "order_without_click", "order", "click"),
)
# The reverse link: every item needs a view.
ITEM_VIEWS = _Link("items", ("item_id",), "views", "item_without_views")


# --------------------------------------------------------------------------- per-table state


class _Table:
    """One table under validation: its coerced cells, which rows are bad, and why."""

    def __init__(self, name: str, frame: pd.DataFrame):
        self.name = name
        self.raw = frame.reset_index(drop=True)  # shares cells with the caller's frame, never written to
        self.n = len(self.raw)
        self.bad = np.zeros(self.n, dtype=bool)
        self.failures: list[pd.DataFrame] = []
        self.table_failure: str | None = None
        self.coerced: Coerced | None = None
        missing = missing_columns(name, self.raw)
        if missing:
            self.table_failure = f"missing column(s): {', '.join(missing)}"
            for column in missing:
                self.add(failures_frame([-1], column, "missing_column", [None], f"required column '{column}' is missing"))
            return
        self.coerced = coerce_table(name, self.raw)
        self.add(self.coerced.failures)
        row_failures, table_failures = schema_failures(name, self.coerced.frame)
        self.add(row_failures)
        if len(table_failures):
            self.table_failure = "schema check failed: " + ", ".join(table_failures["rule"].unique())
            self.add(table_failures)

    @property
    def usable(self) -> bool:
        return self.table_failure is None

    def add(self, failures: pd.DataFrame | None) -> int:
        """Record failures; return how many rows became bad."""
        if failures is None or failures.empty:
            return 0
        self.failures.append(failures)
        rows = failures["row"].to_numpy()
        rows = rows[rows >= 0]
        before = int(self.bad.sum())
        self.bad[rows] = True
        return int(self.bad.sum()) - before

    def column(self, name: str) -> np.ndarray:
        return self.coerced.columns[name].to_numpy()

    def rows_with(self, columns: tuple[str, ...], action: str | None) -> np.ndarray:
        """Rows whose ``columns`` converted (and whose action is ``action``, when given)."""
        mask = self.coerced.valid(*columns)
        if action is not None:
            mask &= self.coerced.valid("action") & self.coerced.columns["action"].eq(action).fillna(False).to_numpy(dtype=bool)
        return mask

    def quarantine(self) -> pd.DataFrame:
        if not self.failures:
            return pd.DataFrame(columns=QUARANTINE_COLUMNS)
        found = pd.concat(self.failures, ignore_index=True)
        found.insert(0, "table", self.name)
        found["row"] = found["row"].astype("Int64").mask(found["row"] < 0)
        found.insert(2, "key", self._keys(found["row"]))
        return found[QUARANTINE_COLUMNS]

    def _keys(self, rows: pd.Series) -> list[str]:
        key = [k for k in TABLES[self.name].key if k in self.raw.columns]
        if not key or rows.isna().all():
            return [""] * len(rows)
        positions = rows.fillna(0).to_numpy(dtype=np.int64)
        parts = [np.array([f"{k}={v}" for v in self.raw[k].iloc[positions].astype(str)], dtype=object) for k in key]
        joined = parts[0]
        for part in parts[1:]:
            joined = joined + "," + part
        return ["" if pd.isna(r) else k for r, k in zip(rows, joined, strict=True)]

    def clean(self) -> pd.DataFrame:
        canonical = list(TABLES[self.name].columns)
        if not self.usable:
            return self.raw.iloc[:0].copy()
        typed = self.coerced.frame
        typed = typed.loc[~self.bad[typed.index.to_numpy()]]
        extras = [c for c in typed.columns if c not in canonical]
        return typed[canonical + extras].reset_index(drop=True)


# --------------------------------------------------------------------------- references


def _contained(child: list[np.ndarray], parent: list[np.ndarray]) -> np.ndarray:
    """For each child tuple, whether some parent tuple equals it."""
    if len(child) == 1:
        return pd.Index(child[0]).isin(parent[0])
    return pd.MultiIndex.from_arrays(child).isin(pd.MultiIndex.from_arrays(parent))


def _values(table: _Table, columns: tuple[str, ...], mask: np.ndarray) -> list[np.ndarray]:
    return [table.column(c)[mask] for c in columns]


def _link_failures(
    child: _Table, parent: _Table, *, link: _Link, child_rows: np.ndarray, parent_rows: np.ndarray, rule: str, message: str
) -> pd.DataFrame | None:
    """Failures of ``child_rows`` that match no row among ``parent_rows`` (None: all match)."""
    rows = np.flatnonzero(child_rows)
    if rows.size == 0:
        return None
    found = _contained(_values(child, link.columns, child_rows), _values(parent, link.columns, parent_rows))
    rows = rows[~found]
    if rows.size == 0:
        return None
    cols = [child.column(c)[rows] for c in link.columns]
    values = cols[0] if len(cols) == 1 else [tuple(v.item() for v in t) for t in zip(*cols, strict=True)]
    return failures_frame(rows, ",".join(link.columns), rule, values, message)


def _unknown_message(link: _Link) -> str:
    if link.unknown_rule == "item_without_views":
        return "no row of views has this item_id"
    if link.unknown_rule == "order_without_click":
        return "no click on the same (query_id, item_id)"
    if link.parent == "impressions":
        return f"{link.child_action} on (query_id, item_id) that impressions never showed"
    return f"{'/'.join(link.columns)} not found in {link.parent}"


def _check_references(tables: dict[str, _Table]) -> None:
    """Every child row with a readable foreign key against every parent row that has a readable key."""
    for link in (*LINKS, ITEM_VIEWS):
        child, parent = tables.get(link.child), tables.get(link.parent)
        if child is None or parent is None or not (child.usable and parent.usable):
            continue
        child_rows = child.rows_with(link.columns, link.child_action)
        parent_rows = parent.rows_with(link.columns, link.parent_action)
        child.add(_link_failures(
            child, parent, link=link, child_rows=child_rows, parent_rows=parent_rows, rule=link.unknown_rule, message=_unknown_message(link)
        ))


def _cascade(tables: dict[str, _Table]) -> None:
    """Quarantine rows whose parent (or, for items, every view) was quarantined, until nothing changes."""
    changed = True
    while changed:
        changed = False
        for link in (*LINKS, ITEM_VIEWS):
            child, parent = tables.get(link.child), tables.get(link.parent)
            if child is None or parent is None or not (child.usable and parent.usable):
                continue
            child_rows = ~child.bad & child.rows_with(link.columns, link.child_action)
            parent_rows = ~parent.bad & parent.rows_with(link.columns, link.parent_action)
            if link is ITEM_VIEWS:
                rule, message = "item_without_views", "every view of this item was quarantined"
            else:
                rule, message = f"{PARENT_QUARANTINED}:{link.parent}", f"its {link.parent} row with this {'/'.join(link.columns)} was quarantined"
            changed |= child.add(_link_failures(child, parent, link=link, child_rows=child_rows, parent_rows=parent_rows, rule=rule, message=message)) > 0


# --------------------------------------------------------------------------- images


def _check_images(table: _Table, image_root: str | Path | None, image_size: int, image_channels: int, progress: bool) -> None:
    """Decode every image of ``table`` (bytes or confined file) and check its size and channels."""
    images, paths = table.column("image"), table.column("image_path")
    with_bytes = np.fromiter((has_image_bytes(v) for v in images), dtype=bool, count=table.n)
    with_path = np.fromiter((has_image_path(v) for v in paths), dtype=bool, count=table.n)
    rows = np.flatnonzero(table.coerced.valid("image", "image_path") & (with_bytes ^ with_path))
    root = Path(image_root).resolve() if image_root is not None else None
    records: list[tuple[int, str, str, Any, str]] = []
    bar = tqdm(rows, desc=f"validate {table.name} images", unit="img", disable=not progress or rows.size < PROGRESS_MIN_IMAGES, leave=False, mininterval=1.0)
    for row in bar:
        if with_bytes[row]:
            column, data, shown = "image", images[row], images[row]
        else:
            column, shown = "image_path", paths[row]
            if root is None:
                records.append((row, column, "image_file_missing", shown, "image_path is set but no image root was given: pass the photo folder (--image-root, or data.import_dir)"))
                continue
            try:
                file = resolve_image_path(paths[row], root)
            except ImageError as exc:
                records.append((row, column, "image_path_outside_root", shown, str(exc)))
                continue
            if not file.is_file():
                records.append((row, column, "image_file_missing", shown, f"no file {paths[row]!r} under {root}"))
                continue
            data = file.read_bytes()
        try:
            pixels = decode_image(data)
        except ImageError as exc:
            records.append((row, column, "image_decodable", shown, str(exc)))
            continue
        height, width = pixels.shape[:2]
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        if (height, width) != (image_size, image_size):
            records.append((row, column, "image_size", f"{width}x{height}", f"image is {width}x{height} pixels, expected {image_size}x{image_size}"))
        if channels != image_channels:
            records.append((row, column, "image_channels", channels, f"image has {channels} channel(s), expected {image_channels}"))
    if records:
        frame = pd.DataFrame(records, columns=["row", "column", "rule", "value", "message"])
        table.add(frame.assign(value=frame["value"].map(short_repr)))


# --------------------------------------------------------------------------- entry points


def validate_tables(
    tables: dict[str, pd.DataFrame],
    *,
    image_root: str | Path | None = None,
    image_size: int,
    image_channels: int,
    check_images: bool = True,
    max_bad_fraction: float,
    progress: bool = True,
) -> ValidationResult:
    """Validate the canonical tables and the links between them; never modifies ``tables``.

    ``image_root``: the folder ``image_path`` values are relative to (None: rows
    with a path fail ``image_file_missing``). Raises ``ValueError`` when a
    required table is absent or a table name is unknown.
    """
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise ValueError(f"required table(s) missing: {', '.join(missing)} (need {', '.join(REQUIRED_TABLES)})")
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown table(s): {', '.join(unknown)}; the canonical tables are {', '.join(TABLES)}")
    if image_channels not in (1, 3):
        raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
    t0 = time.perf_counter()
    state = {name: _Table(name, tables[name]) for name in TABLES if name in tables}
    if check_images:
        for name in IMAGE_TABLES:
            if state[name].usable:
                _check_images(state[name], image_root, image_size, image_channels, progress)
    _check_references(state)
    _cascade(state)

    parts = [t.quarantine() for t in state.values()]
    quarantine = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    quarantine = quarantine.astype({"row": "Int64"})
    order = {name: i for i, name in enumerate(TABLES)}
    quarantine = (
        quarantine.assign(_order=quarantine["table"].map(order), _row=quarantine["row"].fillna(-1))
        .sort_values(["_order", "_row"], kind="stable")
        .drop(columns=["_order", "_row"])
        .reset_index(drop=True)
    )
    counts = {name: TableCounts(t.n, t.n if not t.usable else int(t.bad.sum()), t.table_failure) for name, t in state.items()}
    result = ValidationResult(
        clean={name: t.clean() for name, t in state.items()},
        quarantine=quarantine,
        counts=counts,
        max_bad_fraction=max_bad_fraction,
        images_checked=check_images,
        seconds=round(time.perf_counter() - t0, 3),
    )
    log.info(
        "validation %s in %.1f s: %d of %d rows quarantined",
        "passed" if result.passed else "FAILED",
        result.seconds,
        sum(c.bad_rows for c in counts.values()),
        sum(c.rows for c in counts.values()),
    )
    return result


def validate_folder(
    folder: str | Path,
    *,
    image_root: str | Path | None = None,
    image_size: int,
    image_channels: int,
    check_images: bool = True,
    max_bad_fraction: float,
    progress: bool = True,
) -> ValidationResult:
    """Read the Parquet tables in ``folder`` (``read_tables``) and validate them.

    A missing folder or required table file raises ``FileNotFoundError`` naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} not found")
    return validate_tables(
        read_tables(folder),
        image_root=image_root,
        image_size=image_size,
        image_channels=image_channels,
        check_images=check_images,
        max_bad_fraction=max_bad_fraction,
        progress=progress,
    )
