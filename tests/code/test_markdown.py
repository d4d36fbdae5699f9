"""onevision.markdown: the tables every report and benchmark result is written with."""

from __future__ import annotations

import pytest

from onevision.markdown import table
from tests.support.markdown_tables import has_row, table_rows


def test_cells_are_written_as_given_and_read_back():
    text = table([{"system": "mca", "HR@10": "0.850", "id": "007", "note": None}], align="lrrl")
    assert text.splitlines()[1].startswith("|:") and "--:|" in text.splitlines()[1]
    assert table_rows(text) == [["system", "HR@10", "id", "note"], ["mca", "0.850", "007", ""]]  # no number reparsing


def test_a_pipe_or_newline_in_a_cell_cannot_split_the_row():
    text = table([["a|b", "two\nlines"]], ["k", "v|w"])
    assert len(text.splitlines()) == 3
    assert has_row(text, "a|b", "two lines") and table_rows(text)[0] == ["k", "v|w"]


def test_align_must_name_every_column():
    with pytest.raises(ValueError, match="2 letters for 3 columns"):
        table([[1, 2, 3]], ["a", "b", "c"], align="lr")
    with pytest.raises(ValueError, match="at least one column"):
        table([])
