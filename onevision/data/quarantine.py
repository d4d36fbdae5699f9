"""What validation found: the quarantine table, the rules a row can break, per-table counts and the report.

:class:`ValidationResult` is what ``onevision.data.validation.validate_tables``
returns: the clean tables, one quarantine row per failure
(:data:`QUARANTINE_COLUMNS`) with its rule (:data:`RULES`), and the counts that
decide whether a table failed; it renders ``reports/validate.md``
(:meth:`ValidationResult.report_markdown`) and ``metrics/validate.json``
(:meth:`ValidationResult.to_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from onevision import markdown
from onevision.data.schemas import RULES as SCHEMA_RULES

QUARANTINE_COLUMNS = ["table", "row", "key", "column", "rule", "value", "message"]
PARENT_QUARANTINED = "parent_quarantined"  # rule of a cascaded row: f"{PARENT_QUARANTINED}:{parent table}"

RULES: dict[str, str] = {
    **SCHEMA_RULES,
    "unknown_item": "item_id is not in items",
    "unknown_user": "user_id is not in users",
    "unknown_query": "query_id is not in queries",
    "item_without_views": "an item needs at least one catalog view that passed validation",
    "click_on_item_not_shown": "a click on (query_id, item_id) that impressions never showed",
    "order_on_item_not_shown": "an order on (query_id, item_id) that impressions never showed",
    "order_without_click": "an order needs a click on the same (query_id, item_id)",
    PARENT_QUARANTINED: "the row's parent row was quarantined",
    "image_decodable": "the image does not decode as PNG/JPEG within the pixel limit",
    "image_size": "the image does not have image_size x image_size pixels",
    "image_channels": "the image does not have image_channels channels (1: L, 3: RGB)",
    "image_path_outside_root": "image_path leaves the image root (.., absolute, symlink out)",
    "image_file_missing": "image_path names no file under the image root, or no image root was given",
}


@dataclass(frozen=True)
class TableCounts:
    rows: int
    bad_rows: int
    table_failure: str | None = None  # why the whole table was rejected (e.g. a missing column)

    @property
    def bad_fraction(self) -> float:
        return self.bad_rows / self.rows if self.rows else (1.0 if self.table_failure else 0.0)


@dataclass
class ValidationResult:
    """What :func:`onevision.data.validation.validate_tables` found.

    ``clean``: each table without its quarantined rows (contract dtypes, index
    reset); ``quarantine``: one row per failure (:data:`QUARANTINE_COLUMNS`;
    ``row`` is the row's position in the input table, missing for table-level
    failures); ``counts``: rows and quarantined rows per table.
    """

    clean: dict[str, pd.DataFrame]
    quarantine: pd.DataFrame
    counts: dict[str, TableCounts]
    max_bad_fraction: float
    images_checked: bool
    seconds: float = 0.0

    @property
    def failed_tables(self) -> list[str]:
        return [t for t, c in self.counts.items() if c.table_failure or c.bad_fraction > self.max_bad_fraction]

    @property
    def passed(self) -> bool:
        return not self.failed_tables

    def rule_counts(self) -> pd.DataFrame:
        """Rows per (table, rule, column), with the first message: the report's backbone."""
        records = []
        for (table, rule, column), group in self.quarantine.groupby(["table", "rule", "column"], sort=False):
            whole_table = group["row"].isna().all()
            rows = self.counts[table].rows if whole_table else group["row"].nunique()
            records.append((table, rule, column, int(rows), group["message"].iloc[0]))
        return pd.DataFrame(records, columns=["table", "rule", "column", "rows", "message"])

    def report_markdown(self, examples: int = 5) -> str:
        """A readable report: per table, per rule, the column, the count of rows and example rows."""
        status = "PASSED" if self.passed else "FAILED"
        lines = [f"# Data validation: {status}", ""]
        if self.failed_tables:
            why = ", ".join(f"{t} ({self._why(t)})" for t in self.failed_tables)
            lines += [f"Failing tables: {why}.", ""]
        lines += [
            f"A table fails when more than {self.max_bad_fraction:.2%} of its rows are quarantined, or when it is "
            "unusable as a whole (a missing column). Rows are 0-based positions in the input tables.",
            "",
            f"Images: {'decoded and checked' if self.images_checked else 'not checked (check_images is off)'}.",
            "",
            markdown.table([[table, c.rows, c.bad_rows, f"{c.bad_fraction:.2%}", "FAIL" if table in self.failed_tables else "ok"]
                            for table, c in self.counts.items()],
                           ["table", "rows", "quarantined", "bad fraction", "status"], align="lrrrl"),
        ]
        if self.quarantine.empty:
            lines += ["", "No row was quarantined."]
            return "\n".join(lines) + "\n"
        counts = self.rule_counts()
        for table in self.counts:
            rules = counts[counts["table"] == table]
            if rules.empty:
                continue
            q = self.quarantine[self.quarantine["table"] == table]
            rows = []
            for r in rules.itertuples(index=False):
                hits = q[(q["rule"] == r.rule) & (q["column"] == r.column)]
                if hits["row"].isna().all():
                    sample = "whole table"
                else:
                    sample = ", ".join(
                        f"{h.row} [{h.key}]: {h.value}" for h in hits.drop_duplicates("row").head(examples).itertuples(index=False)
                    )
                    if len(hits) > examples:
                        sample += ", …"
                rows.append([r.rule, r.column, r.rows, r.message, sample])
            lines += ["", f"## {table}", "",
                      markdown.table(rows, ["rule", "column", "rows", "message", "examples (row [key]: value)"], align="llrll")]
        lines += ["", "## Rules", ""]
        lines += [f"- `{rule}`: {RULES.get(rule.split(':')[0], rule)}" for rule in sorted(counts["rule"].unique())]
        return "\n".join(lines) + "\n"

    def to_metrics(self) -> dict[str, Any]:
        """Numbers for metrics/validate.json (``passed`` is what the promotion gate reads)."""
        counts = self.rule_counts()
        return {
            "passed": self.passed,
            "max_bad_fraction": self.max_bad_fraction,
            "images_checked": self.images_checked,
            "rows": int(sum(c.rows for c in self.counts.values())),
            "rows_quarantined": int(sum(c.bad_rows for c in self.counts.values())),
            "failed_tables": len(self.failed_tables),
            "tables": {
                t: {"rows": c.rows, "bad_rows": c.bad_rows, "bad_fraction": round(c.bad_fraction, 6), "failed": t in self.failed_tables}
                for t, c in self.counts.items()
            },
            "rules": {f"{r.table}.{r.rule}": int(r.rows) for r in counts.itertuples(index=False)},
        }

    def _why(self, table: str) -> str:
        c = self.counts[table]
        if c.table_failure:
            return c.table_failure
        return f"{c.bad_fraction:.2%} of rows quarantined"


class ValidationFailed(RuntimeError):
    """Validation did not pass; ``result`` has everything, ``str()`` is the report."""

    def __init__(self, result: ValidationResult):
        super().__init__(result.report_markdown())
        self.result = result
