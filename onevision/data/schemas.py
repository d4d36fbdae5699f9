"""pandera schemas of the canonical tables, and safe dtype coercion in front of them.

Every table of :mod:`onevision.data.tables` has one ``DataFrameSchema`` in
:data:`SCHEMAS`: non-null columns, value ranges, allowed values, unique keys and
exactly-one-of ``image`` / ``image_path``. Each check is named after the rule
it enforces (:data:`RULES`), which is what the quarantine table and the
validation report show.

Dtypes are settled *before* the schema runs, by :func:`coerce_table`, because
pandera's own coercion is lossy (it truncates 4.5 to 4 when casting to int64)
and, when one cell does not convert, leaves the column unconverted so that its
range checks fail for the whole column instead of that row. ``coerce_table`` converts cell
by cell where that is exact (any integer -> int64, integral floats or numeric
text -> int64, numbers or numeric text -> float64, text -> string, time stamps
-> UTC nanoseconds; a time stamp without a zone is read as UTC) and reports
every cell it cannot convert as rule ``dtype``, so one bad cell costs one row,
never the table. The schemas themselves do not coerce: they state the exact
dtypes of a clean table.

At a boundary, :func:`conform` is the whole contract in one call: columns
present, dtypes coerced, schema checked; it raises :class:`TableSchemaError`
naming the first failures. ``onevision.data.validation`` uses the same pieces
but quarantines rows instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pandera.errors
import pandera.pandas as pa
from pandera.pandas import Check, Column, DataFrameSchema

from onevision.data.tables import TABLES

# The rules one table can break on its own (cross-table and image rules are in validation.py).
RULES: dict[str, str] = {
    "missing_column": "a required column is absent: the whole table is rejected",
    "dtype": "the value cannot be converted exactly to the column's dtype",
    "not_null": "a required value is missing",
    "unique_key": "the key repeats an earlier row's key (the first occurrence is kept)",
    "non_negative": "the value must be >= 0",
    "positive_finite": "the value must be > 0 and finite",
    "non_negative_finite": "the value must be >= 0 and finite",
    "allowed_values": "the value is not one of the allowed values",
    "image_exactly_one": "exactly one of image (bytes) and image_path (relative path) must be set",
    "affinity_distribution": "category_affinity must be non-negative numbers summing to 1",
    "schema_check": "a schema check could not run on the column",
}

ACTIONS = ("click", "order")
AFFINITY_TOLERANCE = 1e-3  # tolerated |sum(category_affinity) - 1|

_BAD = object()  # what a parser returns for a cell it cannot convert exactly


class TableSchemaError(ValueError):
    """A table breaks its contract; the message names table, rows, columns and rules."""


# --------------------------------------------------------------------------- cell helpers


def is_null(value: Any) -> bool:
    """None, NaN, NA or NaT (list-like values are never null)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def has_image_bytes(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview))


def has_image_path(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def short_repr(value: Any, limit: int = 80) -> str:
    """A cell as short text for reports: bytes as their length and first bytes."""
    if has_image_bytes(value):
        head = bytes(value[:8]).hex()
        text = f"<{len(value)} bytes {head}…>" if len(value) > 8 else f"<{len(value)} bytes {head}>"
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- checks


def _named(rule: str, fn: Callable[[pd.Series], pd.Series]) -> Check:
    # The check's name is the rule; no `error=`, so pandera's failure cases carry the name itself.
    return Check(fn, name=rule)


def _non_negative() -> Check:
    return _named("non_negative", lambda s: s >= 0)


def _positive_finite() -> Check:
    return _named("positive_finite", lambda s: (s > 0) & np.isfinite(s))


def _non_negative_finite() -> Check:
    return _named("non_negative_finite", lambda s: (s >= 0) & np.isfinite(s))


def _allowed(values: tuple[str, ...]) -> Check:
    return _named("allowed_values", lambda s: s.isin(values))


def _affinity_is_distribution(value: Any) -> bool:
    arr = np.asarray(value, dtype=np.float64)
    return arr.ndim == 1 and arr.size > 0 and bool(np.all(arr >= 0)) and abs(float(arr.sum()) - 1.0) <= AFFINITY_TOLERANCE


def _image_exactly_one() -> Check:
    def check(df: pd.DataFrame) -> pd.Series:
        has_bytes = df["image"].map(has_image_bytes).astype(bool)
        has_path = df["image_path"].map(has_image_path).astype(bool)
        return has_bytes ^ has_path

    return Check(check, name="image_exactly_one")


def _id() -> Column:
    return Column("int64", _non_negative(), nullable=False)


def _image_columns() -> dict[str, Column]:
    return {"image": Column(object, nullable=True), "image_path": Column(object, nullable=True)}


def _schema(name: str, columns: dict[str, Column], checks: list[Check] | None = None) -> DataFrameSchema:
    key = list(TABLES[name].key)
    return DataFrameSchema(
        columns,
        checks=checks or [],
        unique=key,
        report_duplicates="exclude_first",  # the first row with a key wins; later copies are quarantined
        strict=False,  # extra columns are the owner's business and pass through
        name=name,
    )


ITEMS = _schema(
    "items",
    {
        "item_id": _id(),
        "category": Column("int64", _non_negative(), nullable=False),
        "category_name": Column("string", nullable=False),
        "brand": Column("string", nullable=False),
        "price": Column("float64", _positive_finite(), nullable=False),
    },
)

VIEWS = _schema(
    "views",
    {
        "view_id": _id(),
        "item_id": _id(),
        "view_idx": Column("int64", _non_negative(), nullable=False),
        **_image_columns(),
    },
    checks=[_image_exactly_one()],
)

USERS = _schema(
    "users",
    {
        "user_id": _id(),
        "signup_day": Column("int64", nullable=False),
        "region": Column("string", nullable=True),  # unknown for imported catalogs
    },
)

USER_TASTES = _schema(
    "user_tastes",
    {
        "user_id": _id(),
        "category_affinity": Column(
            object, _named("affinity_distribution", lambda s: s.map(_affinity_is_distribution).astype(bool)), nullable=False
        ),
        "favorite_brands": Column(object, nullable=False),
        "brand_weight": Column("float64", _non_negative_finite(), nullable=False),
        "price_sensitivity": Column("float64", _non_negative_finite(), nullable=False),
    },
)

QUERIES = _schema(
    "queries",
    {
        "query_id": _id(),
        "user_id": _id(),
        "item_id": _id(),
        "ts": Column("datetime64[ns, UTC]", nullable=False),
        **_image_columns(),
    },
    checks=[_image_exactly_one()],
)

IMPRESSIONS = _schema(
    "impressions",
    {
        "query_id": _id(),
        "position": Column("int64", _non_negative(), nullable=False),
        "item_id": _id(),
    },
)

INTERACTIONS = _schema(
    "interactions",
    {
        "query_id": _id(),
        "item_id": _id(),
        "action": Column("string", _allowed(ACTIONS), nullable=False),
    },
)

SCHEMAS: dict[str, DataFrameSchema] = {
    s.name: s for s in (ITEMS, VIEWS, USERS, USER_TASTES, QUERIES, IMPRESSIONS, INTERACTIONS)
}

# The schemas and the table contract must describe the same columns.
for _name, _table in TABLES.items():
    if list(SCHEMAS[_name].columns) != list(_table.columns):  # pragma: no cover - guards edits of tables.py
        raise RuntimeError(f"schema of {_name} does not match onevision.data.tables")


# --------------------------------------------------------------------------- failures


FAILURE_COLUMNS = ["row", "column", "rule", "value", "message"]


def failures_frame(rows, column: str, rule: str, values, message: str | list[str]) -> pd.DataFrame:
    """Failures of one rule: ``row`` (positional), column, rule, value (short text), message."""
    rows = np.asarray(rows, dtype=np.int64)
    values = list(values)
    messages = message if isinstance(message, list) else [message] * len(rows)
    return pd.DataFrame(
        {
            "row": rows,
            "column": column,
            "rule": rule,
            "value": [short_repr(v) for v in values],
            "message": messages,
        },
        columns=FAILURE_COLUMNS,
    )


def empty_failures() -> pd.DataFrame:
    return failures_frame([], "", "", [], [])


# --------------------------------------------------------------------------- coercion


@dataclass
class Coerced:
    """Result of :func:`coerce_table`.

    ``columns``: every canonical column converted to its dtype, positional index,
    with placeholders where ``ok[col]`` is False; ``frame``: the rows whose every
    canonical cell converted, as a typed frame (index = positional row);
    ``failures``: one record per cell that did not convert (rules ``dtype`` and
    ``not_null``).
    """

    columns: dict[str, pd.Series]
    ok: dict[str, np.ndarray]
    frame: pd.DataFrame
    failures: pd.DataFrame
    n_rows: int

    def valid(self, *cols: str) -> np.ndarray:
        """Rows whose cells in ``cols`` all converted."""
        mask = np.ones(self.n_rows, dtype=bool)
        for col in cols:
            mask &= self.ok[col]
        return mask


def _object_values(series: pd.Series) -> np.ndarray:
    return series.astype(object).to_numpy()


def _parse_int(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return _BAD
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return value if -(2**63) <= value < 2**63 else _BAD
    if isinstance(value, (float, np.floating)):
        return _parse_int(int(value)) if math.isfinite(value) and float(value).is_integer() else _BAD  # bounded as ints are
    if isinstance(value, str):
        text = value.strip()
        try:
            return _parse_int(int(text))
        except ValueError:
            try:
                return _parse_int(float(text))
            except ValueError:
                return _BAD
    return _BAD


def _parse_float(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return _BAD
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return _BAD
    return _BAD


def _elementwise(series: pd.Series, parse: Callable[[Any], Any], dtype: str, empty: Any) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Convert cell by cell: (values, bad, null) with ``empty`` in bad and null cells."""
    raw = _object_values(series)
    null = np.fromiter((is_null(v) for v in raw), dtype=bool, count=len(raw))
    parsed = [empty if n else parse(v) for v, n in zip(raw, null, strict=True)]
    bad = np.fromiter((p is _BAD for p in parsed), dtype=bool, count=len(parsed))
    values = pd.Series([empty if p is _BAD else p for p in parsed], index=series.index, dtype=dtype)
    return values, bad, null


def _coerce_int(series: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        n = len(series)
        return pd.Series(np.zeros(n, dtype=np.int64), index=series.index), np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    if pd.api.types.is_integer_dtype(dtype):
        null = series.isna().to_numpy()
        if not null.any() and (dtype.kind != "u" or series.max() < 2**63):
            return series.astype("int64"), np.zeros(len(series), dtype=bool), null
    elif pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        null = np.isnan(values)
        finite = np.where(null, 0.0, values)
        bad = ~null & (~np.isfinite(finite) | (np.floor(finite) != finite) | (np.abs(finite) >= 2.0**63))
        safe = np.where(null | bad, 0.0, finite)
        return pd.Series(safe.astype(np.int64), index=series.index), bad, null
    return _elementwise(series, _parse_int, "int64", 0)


def _coerce_float(series: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    dtype = series.dtype
    n = len(series)
    if pd.api.types.is_bool_dtype(dtype):
        return pd.Series(np.full(n, np.nan), index=series.index), np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    if pd.api.types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        # NaN stays in: the schema's not-null check names it.
        return pd.Series(values, index=series.index), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    values, bad, _ = _elementwise(series, _parse_float, "float64", np.nan)
    return values, bad, np.zeros(n, dtype=bool)


def _coerce_string(series: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    n = len(series)
    if isinstance(series.dtype, pd.StringDtype) or pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty"):
        return series.astype("string"), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    raw = _object_values(series)
    bad = np.fromiter((not (is_null(v) or isinstance(v, str)) for v in raw), dtype=bool, count=n)
    values = pd.Series([None if b or is_null(v) else v for v, b in zip(raw, bad, strict=True)], index=series.index, dtype="string")
    return values, bad, np.zeros(n, dtype=bool)


def _coerce_timestamp(series: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    n = len(series)
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        stamps = series.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(dtype):
        stamps = series.dt.tz_localize("UTC")
    else:
        raw = _object_values(series)
        null = np.fromiter((is_null(v) for v in raw), dtype=bool, count=n)
        parseable = np.fromiter((isinstance(v, (str, datetime, np.datetime64)) for v in raw), dtype=bool, count=n)
        stamps = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, UTC]")
        bad = ~null & ~parseable
        if parseable.any():
            parsed = pd.to_datetime(pd.Series(raw[parseable], dtype=object), utc=True, errors="coerce", format="ISO8601")
            bad[np.flatnonzero(parseable)[parsed.isna().to_numpy()]] = True
            parsed = parsed.where(parsed.notna(), pd.Timestamp(0, tz="UTC"))
            try:
                stamps.iloc[np.flatnonzero(parseable)] = parsed.dt.as_unit("ns").to_numpy()
            except (OverflowError, pd.errors.OutOfBoundsDatetime):
                bad[np.flatnonzero(parseable)] = True
        return stamps, bad, np.zeros(n, dtype=bool)
    try:
        return stamps.dt.as_unit("ns"), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        return pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, UTC]"), np.ones(n, dtype=bool), np.zeros(n, dtype=bool)


def _is_list_of(kind: tuple[type, ...]) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if is_null(value):
            return True
        if not isinstance(value, (list, tuple, np.ndarray)):
            return False
        return all(isinstance(v, kind) and not isinstance(v, (bool, np.bool_)) for v in value)

    return check


# Element types of the object columns: anything else is a `dtype` failure with this message.
_OBJECT_CELLS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "image": (lambda v: is_null(v) or has_image_bytes(v), "must be encoded image bytes (PNG/JPEG) or null"),
    "image_path": (lambda v: is_null(v) or isinstance(v, str), "must be a path (text) relative to the image root, or null"),
    "category_affinity": (_is_list_of((int, float, np.integer, np.floating)), "must be a list of numbers"),
    "favorite_brands": (_is_list_of((str,)), "must be a list of brand names"),
}


def _dtype_message(column: str, dtype: str) -> str:
    if column in _OBJECT_CELLS:
        return _OBJECT_CELLS[column][1]
    return f"cannot be converted exactly to {dtype}"


def _coerce_object(column: str, series: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    raw = _object_values(series)
    accept = _OBJECT_CELLS[column][0] if column in _OBJECT_CELLS else (lambda v: True)
    bad = np.fromiter((not accept(v) for v in raw), dtype=bool, count=len(raw))
    # Missing cells become None (not NaN), the one null the image loader and Parquet agree on.
    values = pd.Series([None if is_null(v) else v for v in raw], index=series.index, dtype=object)
    return values, bad, np.zeros(len(raw), dtype=bool)


def _coerce_column(column: str, dtype: str, series: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    if dtype == "int64":
        return _coerce_int(series)
    if dtype == "float64":
        return _coerce_float(series)
    if dtype == "string":
        return _coerce_string(series)
    if dtype.startswith("datetime64"):
        return _coerce_timestamp(series)
    return _coerce_object(column, series)


def missing_columns(name: str, frame: pd.DataFrame) -> list[str]:
    """Canonical columns of table ``name`` absent from ``frame``, in contract order."""
    return [c for c in TABLES[name].columns if c not in frame.columns]


def coerce_table(name: str, frame: pd.DataFrame) -> Coerced:
    """Convert every canonical column of ``frame`` to its contract dtype, cell by cell (see module doc).

    ``frame`` must hold every canonical column (see :func:`missing_columns`); it is
    not modified. Rows are addressed by position.
    """
    frame = frame.reset_index(drop=True)  # a new frame sharing the cells; the caller's stays as it was
    columns: dict[str, pd.Series] = {}
    ok: dict[str, np.ndarray] = {}
    failures = []
    for column, dtype in TABLES[name].columns.items():
        values, bad, null = _coerce_column(column, dtype, frame[column])
        columns[column] = values
        ok[column] = ~(bad | null)
        if bad.any():
            rows = np.flatnonzero(bad)
            failures.append(failures_frame(rows, column, "dtype", frame[column].iloc[rows], _dtype_message(column, dtype)))
        if null.any():
            rows = np.flatnonzero(null)
            failures.append(failures_frame(rows, column, "not_null", frame[column].iloc[rows], "required value is missing"))
    keep = np.ones(len(frame), dtype=bool)
    for mask in ok.values():
        keep &= mask
    typed = frame.copy(deep=False)
    for column, values in columns.items():
        typed[column] = values
    typed = typed.loc[keep]
    found = pd.concat(failures, ignore_index=True) if failures else empty_failures()
    return Coerced(columns=columns, ok=ok, frame=typed, failures=found, n_rows=len(frame))


# --------------------------------------------------------------------------- schema checks


def _rule_of(check: Any) -> str:
    text = str(check)
    if text == "not_nullable":
        return "not_null"
    if text in ("field_uniqueness", "multiple_fields_uniqueness"):
        return "unique_key"
    if text.startswith("dtype("):
        return "dtype"
    if text == "column_in_dataframe":
        return "missing_column"
    return text


def schema_failures(name: str, typed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run table ``name``'s schema lazily on a coerced frame (index = positional row).

    Returns ``(row_failures, table_failures)``: one record per failing row and
    rule (a frame-wide check is reported once per row, not once per column), and
    the failures that hold no row (a check that could not run: the table is bad).
    """
    schema = SCHEMAS[name]
    try:
        schema.validate(typed, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return empty_failures(), empty_failures()
    key = ",".join(TABLES[name].key)
    rows, table_level = [], []
    for case in cases.itertuples(index=False):
        rule = _rule_of(case.check)
        if case.schema_context == "DataFrameSchema":
            column = key if rule == "unique_key" else ("image,image_path" if rule == "image_exactly_one" else str(case.column))
        else:
            column = str(case.column)
        message = RULES.get(rule, rule)
        if case.index is None or (isinstance(case.index, float) and math.isnan(case.index)):
            table_level.append((-1, column, rule if rule in RULES else "schema_check", case.failure_case, f"{rule}: {case.failure_case}"))
            continue
        row = int(case.index)
        value = typed.at[row, column] if column in typed.columns else case.failure_case
        if rule == "unique_key":
            key_values = tuple(typed.at[row, k].item() for k in TABLES[name].key)
            value = key_values[0] if len(key_values) == 1 else key_values
        rows.append((row, column, rule, value, message))
    return _records_frame(rows), _records_frame(table_level)


def _records_frame(records: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=FAILURE_COLUMNS).astype({"row": "int64"})
    frame["value"] = frame["value"].map(short_repr)
    return frame.drop_duplicates(["row", "column", "rule"], ignore_index=True)


def conform(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with contract dtypes when it satisfies table ``name``'s schema; raise otherwise.

    For boundaries that must not go on with bad data (validated tables read by a
    later stage, a model's input). The result has the canonical columns first.
    """
    missing = missing_columns(name, frame)
    if missing:
        raise TableSchemaError(f"table '{name}' is missing column(s): {', '.join(missing)}")
    coerced = coerce_table(name, frame)
    row_failures, table_failures = schema_failures(name, coerced.frame)
    failures = pd.concat([coerced.failures, row_failures, table_failures], ignore_index=True)
    if len(failures):
        shown = "; ".join(
            f"row {r.row} column {r.column}: {r.rule} ({r.value})" for r in failures.head(5).itertuples(index=False)
        )
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        raise TableSchemaError(f"table '{name}' breaks its schema: {shown}{more}")
    canonical = list(TABLES[name].columns)
    return coerced.frame[canonical + [c for c in frame.columns if c not in canonical]].reset_index(drop=True)


__all__ = [
    "ACTIONS",
    "RULES",
    "SCHEMAS",
    "Coerced",
    "TableSchemaError",
    "coerce_table",
    "conform",
    "missing_columns",
    "pa",
    "schema_failures",
]
