"""Safe dtype coercion of the canonical tables, cell by cell, in front of the schemas.

Dtypes are settled *before* a schema (``onevision.data.schemas``) runs, by
:func:`coerce_table`, because pandera's own coercion is lossy (it truncates 4.5
to 4 when casting to int64) and, when one cell does not convert, leaves the
column unconverted so that its range checks fail for the whole column instead
of that row. ``coerce_table`` converts cell by cell where that is exact (any
integer -> int64, integral floats or numeric text -> int64, numbers or numeric
text -> float64, text -> string, time stamps -> UTC nanoseconds; a time stamp
without a zone is read as UTC) and reports every cell it cannot convert as rule
``dtype``, so one bad cell costs one row, never the table.

Failures, here and in the schema checks and validation, are frames of
:data:`FAILURE_COLUMNS`: one record per row, column and rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from onevision.data.tables import TABLES

_BAD = object()  # what a parser returns for a cell it cannot convert exactly


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
    for column, dtype in TABLES[name].dtypes.items():
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


__all__ = [
    "FAILURE_COLUMNS",
    "Coerced",
    "coerce_table",
    "empty_failures",
    "failures_frame",
    "has_image_bytes",
    "has_image_path",
    "is_null",
    "missing_columns",
    "short_repr",
]
