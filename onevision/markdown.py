"""Markdown tables for the reports and the benchmark results, through pandas' ``DataFrame.to_markdown``.

Cells are written as given: format numbers before they get here (tabulate's
own number parsing is off, so ``"0.850"`` stays ``0.850`` and ids keep their
digits). A ``|`` inside a cell is escaped so it cannot split the row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

_ALIGN = {"l": "left", "r": "right", "c": "center"}


def table(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], columns: Sequence[str] | None = None, *,
          align: str | None = None) -> str:
    """A GitHub-flavoured markdown table (no trailing newline).

    ``rows``: dicts (their keys are the header, in order) or lists with ``columns``.
    ``align``: one letter per column, ``l``, ``r`` or ``c`` (default: every column left);
    e.g. ``"lrr"`` for a name and two numbers.
    """
    frame = pd.DataFrame(list(rows), columns=None if columns is None else list(columns), dtype=object)
    if frame.columns.empty:
        raise ValueError("a markdown table needs at least one column")
    if align is not None and len(align) != len(frame.columns):
        raise ValueError(f"align has {len(align)} letters for {len(frame.columns)} columns")
    frame = frame.map(lambda v: "" if v is None else str(v).replace("|", "\\|").replace("\n", " "))
    frame.columns = [str(c).replace("|", "\\|") for c in frame.columns]
    colalign = None if align is None else tuple(_ALIGN[a] for a in align)
    return frame.to_markdown(index=False, colalign=colalign, disable_numparse=True)
