"""pandera schemas of the canonical tables, built from the column declarations of ``onevision.data.tables``.

Every table has one ``DataFrameSchema`` in :data:`SCHEMAS`: non-null columns,
value ranges, allowed values, unique keys and exactly-one-of ``image`` /
``image_path``. Each check is named after the rule it enforces (:data:`RULES`),
which is what the quarantine table and the validation report show.

The schemas do not coerce: they state the exact dtypes of a clean table, and
``onevision.data.coercion`` settles the dtypes cell by cell before they run.
At a boundary, :func:`conform` is the whole contract in one call: columns
present, dtypes coerced, schema checked; it raises :class:`TableSchemaError`
naming the first failures. ``onevision.data.validation`` uses the same pieces
but quarantines rows instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pandera.errors
from pandera.pandas import Check, DataFrameSchema
from pandera.pandas import Column as SchemaColumn

from onevision.data.coercion import (
    FAILURE_COLUMNS,
    coerce_table,
    empty_failures,
    has_image_bytes,
    has_image_path,
    missing_columns,
    short_repr,
)
from onevision.data.tables import TABLES, Column, Table

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

AFFINITY_TOLERANCE = 1e-3  # tolerated |sum(category_affinity) - 1|


class TableSchemaError(ValueError):
    """A table breaks its contract; the message names table, rows, columns and rules."""


# --------------------------------------------------------------------------- checks


def _named(rule: str, fn: Callable[[pd.Series], pd.Series]) -> Check:
    # The check's name is the rule; no `error=`, so pandera's failure cases carry the name itself.
    return Check(fn, name=rule)


def _affinity_is_distribution(value: Any) -> bool:
    arr = np.asarray(value, dtype=np.float64)
    return arr.ndim == 1 and arr.size > 0 and bool(np.all(arr >= 0)) and abs(float(arr.sum()) - 1.0) <= AFFINITY_TOLERANCE


# The value rules a column declaration (onevision.data.tables.Column.rule) can name.
VALUE_CHECKS: dict[str, Callable[[pd.Series], pd.Series]] = {
    "non_negative": lambda s: s >= 0,
    "positive_finite": lambda s: (s > 0) & np.isfinite(s),
    "non_negative_finite": lambda s: (s >= 0) & np.isfinite(s),
    "affinity_distribution": lambda s: s.map(_affinity_is_distribution).astype(bool),
}


def _image_exactly_one() -> Check:
    def check(df: pd.DataFrame) -> pd.Series:
        has_bytes = df["image"].map(has_image_bytes).astype(bool)
        has_path = df["image_path"].map(has_image_path).astype(bool)
        return has_bytes ^ has_path

    return Check(check, name="image_exactly_one")


def _column(column: Column) -> SchemaColumn:
    checks = [_named(column.rule, VALUE_CHECKS[column.rule])] if column.rule else []
    if column.allowed:
        checks.append(_named("allowed_values", lambda s: s.isin(column.allowed)))
    return SchemaColumn(object if column.dtype == "object" else column.dtype, checks, nullable=column.nullable)


def _schema(table: Table) -> DataFrameSchema:
    # A table with photos holds exactly one of image bytes and image path per row.
    with_images = {"image", "image_path"} <= set(table.columns)
    return DataFrameSchema(
        {name: _column(column) for name, column in table.columns.items()},
        checks=[_image_exactly_one()] if with_images else [],
        unique=list(table.key),
        report_duplicates="exclude_first",  # the first row with a key wins; later copies are quarantined
        strict=False,  # extra columns are the owner's business and pass through
        name=table.name,
    )


SCHEMAS: dict[str, DataFrameSchema] = {name: _schema(table) for name, table in TABLES.items()}


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
    "RULES",
    "SCHEMAS",
    "TableSchemaError",
    "conform",
    "schema_failures",
]
