"""Reading the markdown tables that reports and benchmarks write (cells are padded, so tests compare cells, not text)."""

from __future__ import annotations

import re

_PIPE = re.compile(r"(?<!\\)\|")


def table_rows(text: str) -> list[list[str]]:
    """Every table row of ``text`` (headers included, separator lines not) as its stripped cells."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|") or set(line) <= set("|:- "):
            continue
        rows.append([cell.strip().replace("\\|", "|") for cell in _PIPE.split(line.strip("|"))])
    return rows


def has_row(text: str, *cells: str) -> bool:
    """Whether a table row of ``text`` starts with these cells."""
    return any(row[: len(cells)] == list(cells) for row in table_rows(text))
