"""Validation: every class of bad input is quarantined by name, row and column; clean data passes untouched.

Each test builds the same small clean shop, breaks one thing and checks that
the rule is named, the column is named and exactly the broken row (plus the
rows that depend on it) is quarantined while every other row stays clean.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onevision.data.images import encode_png
from onevision.data.quarantine import QUARANTINE_COLUMNS, ValidationFailed
from onevision.data.schemas import TableSchemaError, conform
from onevision.data.tables import TABLES, write_tables
from onevision.data.validation import validate_folder, validate_tables
from tests.support.markdown_tables import has_row

SIZE = 8  # image side of the synthetic shop
N_ITEMS, VIEWS_PER_ITEM, N_USERS, N_QUERIES, SHOWN = 20, 2, 5, 10, 4
# Items 10..19 appear in views only (queries and impressions use items 0..9), so breaking one of
# them touches its own row and its two views, nothing else.
QUIET = 15
QUIET_VIEWS = [QUIET * VIEWS_PER_ITEM, QUIET * VIEWS_PER_ITEM + 1]


def png(seed: int, size: int = SIZE, channels: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, 3)
    return encode_png(rng.integers(0, 256, shape, dtype=np.uint8))


def make_tables() -> dict[str, pd.DataFrame]:
    """A small, fully consistent shop in the canonical tables."""
    n_views = N_ITEMS * VIEWS_PER_ITEM
    items = pd.DataFrame({
        "item_id": np.arange(N_ITEMS, dtype=np.int64) + 100,
        "category": np.arange(N_ITEMS, dtype=np.int64) % 3,
        "category_name": pd.array([("tops", "shoes", "bags")[i % 3] for i in range(N_ITEMS)], dtype="string"),
        "brand": pd.array([f"brand{i % 4}" for i in range(N_ITEMS)], dtype="string"),
        "price": 10.0 + np.arange(N_ITEMS, dtype=np.float64),
    })
    views = pd.DataFrame({
        "view_id": np.arange(n_views, dtype=np.int64) + 1000,
        "item_id": np.repeat(items["item_id"].to_numpy(), VIEWS_PER_ITEM),
        "view_idx": np.tile(np.arange(VIEWS_PER_ITEM, dtype=np.int64), N_ITEMS),
        "image": pd.Series([png(i) for i in range(n_views)], dtype=object),
        "image_path": pd.Series([None] * n_views, dtype=object),
    })
    users = pd.DataFrame({
        "user_id": np.arange(N_USERS, dtype=np.int64) + 10,
        "signup_day": np.array([-30, -5, 0, 3, 7], dtype=np.int64),
        "region": pd.array(["north", "south", "east", "west", "north"], dtype="string"),
    })
    user_tastes = pd.DataFrame({
        "user_id": users["user_id"].to_numpy(),
        "category_affinity": pd.Series([[0.5, 0.3, 0.2] for _ in range(N_USERS)], dtype=object),
        "favorite_brands": pd.Series([[f"brand{u % 4}"] for u in range(N_USERS)], dtype=object),
        "brand_weight": np.ones(N_USERS),
        "price_sensitivity": np.full(N_USERS, 0.5),
    })
    q = np.arange(N_QUERIES, dtype=np.int64)
    queries = pd.DataFrame({
        "query_id": q + 500,
        "user_id": q % N_USERS + 10,
        "item_id": q + 100,
        "ts": pd.Series(pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(q, unit="h")).dt.as_unit("ns"),
        "image": pd.Series([png(1000 + int(k)) for k in q], dtype=object),
        "image_path": pd.Series([None] * N_QUERIES, dtype=object),
    })
    # Query k shows items k, k+1, k+2, k+3 (mod 10) at positions 0..3.
    impressions = pd.DataFrame({
        "query_id": np.repeat(q + 500, SHOWN),
        "position": np.tile(np.arange(SHOWN, dtype=np.int64), N_QUERIES),
        "item_id": np.array([(k + s) % N_QUERIES + 100 for k in q for s in range(SHOWN)], dtype=np.int64),
    })
    # Every query clicks its first item; even queries also order it.
    rows = []
    for k in q:
        rows.append((k + 500, k + 100, "click"))
        if k % 2 == 0:
            rows.append((k + 500, k + 100, "order"))
    interactions = pd.DataFrame(rows, columns=["query_id", "item_id", "action"]).astype({"query_id": "int64", "item_id": "int64", "action": "string"})
    return {
        "items": items,
        "views": views,
        "users": users,
        "user_tastes": user_tastes,
        "queries": queries,
        "impressions": impressions,
        "interactions": interactions,
    }


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    return make_tables()


def run(tables: dict[str, pd.DataFrame], **kwargs):
    args = {"image_size": SIZE, "image_channels": 1, "max_bad_fraction": 0.5, "progress": False, **kwargs}
    return validate_tables(tables, **args)


def hits(result, table: str, rule: str) -> pd.DataFrame:
    q = result.quarantine
    return q[(q["table"] == table) & (q["rule"] == rule)]


def assert_quarantined(result, table: str, rows: list[int], rule: str, column: str) -> None:
    found = hits(result, table, rule)
    assert sorted(found["row"].tolist()) == sorted(rows), result.quarantine.to_string()
    assert set(found["column"]) == {column}


def assert_only_tables(result, tables: dict[str, pd.DataFrame], expected: dict[str, int]) -> None:
    """Exactly these tables lost exactly this many rows; every other table is intact."""
    for name, counts in result.counts.items():
        assert counts.bad_rows == expected.get(name, 0), (name, result.quarantine.to_string())
        assert len(result.clean[name]) == len(tables[name]) - expected.get(name, 0), name


# --------------------------------------------------------------------------- clean data


def test_clean_dataset_passes_with_empty_quarantine(tables):
    result = run(tables, max_bad_fraction=0.0)
    assert result.passed
    assert result.quarantine.empty
    assert list(result.quarantine.columns) == QUARANTINE_COLUMNS
    for name, frame in tables.items():
        assert len(result.clean[name]) == len(frame)
        assert list(result.clean[name].columns) == list(TABLES[name].columns)
    metrics = result.to_metrics()
    assert metrics["passed"] is True and metrics["rows_quarantined"] == 0
    assert metrics["tables"]["views"] == {"rows": 40, "bad_rows": 0, "bad_fraction": 0.0, "failed": False}
    assert "No row was quarantined" in result.report_markdown()


def test_clean_tables_have_contract_dtypes(tables):
    tables["items"]["item_id"] = tables["items"]["item_id"].astype(np.int32)  # safe: widened to int64
    tables["items"]["price"] = tables["items"]["price"].astype(str)  # numeric text: parsed exactly
    tables["queries"]["ts"] = tables["queries"]["ts"].dt.tz_convert("Europe/Berlin")  # same instants
    result = run(tables, max_bad_fraction=0.0)
    assert result.passed and result.quarantine.empty
    clean = result.clean
    assert clean["items"]["item_id"].dtype == "int64"
    assert clean["items"]["price"].dtype == "float64"
    assert str(clean["queries"]["ts"].dtype) == "datetime64[ns, UTC]"
    assert clean["queries"]["ts"].equals(make_tables()["queries"]["ts"])
    assert isinstance(clean["items"]["brand"].dtype, pd.StringDtype)


def test_input_frames_are_never_modified(tables):
    # Several faults at once, an index that is not 0..n-1 and object columns: all code paths run.
    tables["items"].index = np.arange(N_ITEMS)[::-1] * 7
    tables["items"]["price"] = tables["items"]["price"].astype(object)
    tables["items"].loc[tables["items"].index[3], "price"] = "cheap"
    tables["views"].loc[5, "image"] = b"garbage"
    tables["queries"].loc[2, "user_id"] = 999
    tables["interactions"].loc[0, "action"] = "view"
    before = {name: frame.copy(deep=True) for name, frame in tables.items()}
    result = run(tables)
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(frame, before[name])
    # `row` is the position in the input, whatever its index says.
    assert_quarantined(result, "items", [3], "dtype", "price")


# --------------------------------------------------------------------------- schema rules


def test_missing_column_fails_the_whole_table(tables):
    tables["items"] = tables["items"].drop(columns=["price"])
    result = run(tables, max_bad_fraction=1.0)
    assert not result.passed
    assert result.failed_tables == ["items"]
    found = hits(result, "items", "missing_column")
    assert found["column"].tolist() == ["price"] and found["row"].isna().all()
    assert result.counts["items"].bad_rows == N_ITEMS and result.counts["items"].bad_fraction == 1.0
    assert result.clean["items"].empty
    report = result.report_markdown()
    assert "missing_column" in report and "price" in report and "items (missing column(s): price)" in report


def test_non_numeric_price_is_a_dtype_failure_of_its_row(tables):
    price = tables["items"]["price"].astype(object)
    price.iloc[QUIET] = "cheap"
    tables["items"]["price"] = price
    result = run(tables)
    assert_quarantined(result, "items", [QUIET], "dtype", "price")
    assert hits(result, "items", "dtype")["value"].tolist() == ["'cheap'"]
    # The item's views follow it; nothing else is touched.
    assert_quarantined(result, "views", QUIET_VIEWS, "parent_quarantined:items", "item_id")
    assert_only_tables(result, tables, {"items": 1, "views": 2})
    assert result.clean["items"]["price"].dtype == "float64"
    assert 100 + QUIET not in set(result.clean["items"]["item_id"])


def test_non_integral_id_is_a_dtype_failure_not_a_silent_truncation(tables):
    item_id = tables["items"]["item_id"].astype("float64")
    item_id.iloc[QUIET] = 115.5
    tables["items"]["item_id"] = item_id
    result = run(tables)
    assert_quarantined(result, "items", [QUIET], "dtype", "item_id")
    # Its views now point at an item id that no (readable) item has.
    assert_quarantined(result, "views", QUIET_VIEWS, "unknown_item", "item_id")


def test_duplicate_item_id_quarantines_the_later_row(tables):
    tables["items"].loc[QUIET + 1, "item_id"] = 100 + QUIET
    result = run(tables)
    assert_quarantined(result, "items", [QUIET + 1], "unique_key", "item_id")
    assert hits(result, "items", "unique_key")["key"].tolist() == [f"item_id={100 + QUIET}"]
    assert hits(result, "items", "unique_key")["value"].tolist() == [str(100 + QUIET)]
    # The first row with the key stays; the views of the overwritten item lost their item.
    assert 100 + QUIET in set(result.clean["items"]["item_id"])
    assert_quarantined(result, "views", [2 * (QUIET + 1), 2 * (QUIET + 1) + 1], "unknown_item", "item_id")
    assert_only_tables(result, tables, {"items": 1, "views": 2})


def test_duplicate_composite_key(tables):
    tables["impressions"].loc[1, "position"] = 0  # query 500 now has two rows at position 0
    result = run(tables)
    assert_quarantined(result, "impressions", [1], "unique_key", "query_id,position")
    assert hits(result, "impressions", "unique_key")["value"].tolist() == ["(500, 0)"]
    # The click/order rows of query 500 stay: item 100 is still shown at the first position 0.
    assert_only_tables(result, tables, {"impressions": 1})


@pytest.mark.parametrize(
    ("price", "rule"),
    [(-1.0, "positive_finite"), (0.0, "positive_finite"), (np.inf, "positive_finite"), (np.nan, "not_null")],
)
def test_bad_price_is_quarantined(tables, price, rule):
    tables["items"].loc[QUIET, "price"] = price
    result = run(tables)
    assert_quarantined(result, "items", [QUIET], rule, "price")
    assert_only_tables(result, tables, {"items": 1, "views": 2})


def test_negative_position_and_unknown_action(tables):
    tables["impressions"].loc[5, "position"] = -1
    tables["interactions"].loc[1, "action"] = "purchase"
    result = run(tables)
    assert_quarantined(result, "impressions", [5], "non_negative", "position")
    assert_quarantined(result, "interactions", [1], "allowed_values", "action")


def test_missing_brand_is_not_null(tables):
    tables["items"].loc[QUIET, "brand"] = None
    result = run(tables)
    assert_quarantined(result, "items", [QUIET], "not_null", "brand")


def test_both_or_neither_image_source(tables):
    tables["views"].loc[0, "image_path"] = "also/a/path.png"  # both set
    tables["views"].loc[3, "image"] = None  # neither set
    result = run(tables)
    assert_quarantined(result, "views", [0, 3], "image_exactly_one", "image,image_path")


def test_user_tastes_affinity_must_be_a_distribution(tables):
    tables["user_tastes"].at[2, "category_affinity"] = [0.9, 0.9, 0.1]
    tables["user_tastes"].at[3, "category_affinity"] = "lots"
    result = run(tables)
    assert_quarantined(result, "user_tastes", [2], "affinity_distribution", "category_affinity")
    assert_quarantined(result, "user_tastes", [3], "dtype", "category_affinity")
    assert_only_tables(result, tables, {"user_tastes": 2})


# --------------------------------------------------------------------------- references and cascades


def test_click_on_item_not_shown(tables):
    inter = tables["interactions"]
    extra = pd.DataFrame({"query_id": [500], "item_id": [100 + QUIET], "action": pd.array(["click"], dtype="string")})
    tables["interactions"] = pd.concat([inter, extra], ignore_index=True)
    result = run(tables)
    assert_quarantined(result, "interactions", [len(inter)], "click_on_item_not_shown", "query_id,item_id")
    assert hits(result, "interactions", "click_on_item_not_shown")["value"].tolist() == [f"(500, {100 + QUIET})"]
    assert_only_tables(result, tables, {"interactions": 1})


def test_order_needs_its_click(tables):
    # Query 501 shows item 102 at position 1; an order on it without a click.
    extra = pd.DataFrame({"query_id": [501], "item_id": [102], "action": pd.array(["order"], dtype="string")})
    n = len(tables["interactions"])
    tables["interactions"] = pd.concat([tables["interactions"], extra], ignore_index=True)
    result = run(tables)
    assert_quarantined(result, "interactions", [n], "order_without_click", "query_id,item_id")
    assert hits(result, "interactions", "order_on_item_not_shown").empty


def test_unknown_user_cascades_to_impressions_and_interactions(tables):
    tables["queries"].loc[2, "user_id"] = 999
    result = run(tables)
    assert_quarantined(result, "queries", [2], "unknown_user", "user_id")
    assert_quarantined(result, "impressions", [8, 9, 10, 11], "parent_quarantined:queries", "query_id")
    # Query 502 clicked and ordered item 102: both follow their impression.
    inter = tables["interactions"]
    rows = inter.index[inter["query_id"] == 502].tolist()
    assert_quarantined(result, "interactions", rows, "parent_quarantined:impressions", "query_id,item_id")
    assert_only_tables(result, tables, {"queries": 1, "impressions": 4, "interactions": 2})


def test_unknown_item_and_query_references(tables):
    tables["impressions"].loc[7, "item_id"] = 4242
    tables["impressions"].loc[12, "query_id"] = 9999
    result = run(tables)
    assert_quarantined(result, "impressions", [7], "unknown_item", "item_id")
    assert_quarantined(result, "impressions", [12], "unknown_query", "query_id")


def test_item_without_views(tables):
    views = tables["views"]
    tables["views"] = views[views["item_id"] != 100 + QUIET].reset_index(drop=True)
    result = run(tables)
    assert_quarantined(result, "items", [QUIET], "item_without_views", "item_id")
    assert result.counts["items"].bad_rows == 1 and result.counts["views"].bad_rows == 0


def test_cascade_reaches_a_fixpoint(tables):
    # Item 103 loses both views -> the item goes -> query 503 (photographed it), the impressions
    # showing it, and the interactions on those impressions go too.
    for row in (6, 7):
        tables["views"].at[row, "image"] = b"not an image"
    result = run(tables)
    assert_quarantined(result, "views", [6, 7], "image_decodable", "image")
    assert_quarantined(result, "items", [3], "item_without_views", "item_id")
    assert_quarantined(result, "queries", [3], "parent_quarantined:items", "item_id")
    imp = tables["impressions"]
    expected = sorted(set(imp.index[imp["query_id"] == 503]) | set(imp.index[imp["item_id"] == 103]))
    found = result.quarantine[result.quarantine["table"] == "impressions"]
    assert sorted(found["row"].unique().tolist()) == expected
    assert set(found["rule"]) == {"parent_quarantined:queries", "parent_quarantined:items"}
    clean = result.clean
    assert 103 not in set(clean["impressions"]["item_id"]) and 503 not in set(clean["impressions"]["query_id"])
    assert 503 not in set(clean["interactions"]["query_id"])


# --------------------------------------------------------------------------- images


def test_undecodable_image(tables):
    tables["views"].at[4, "image"] = b"\x89PNG\r\n\x1a\n this is not a png"
    result = run(tables)
    assert_quarantined(result, "views", [4], "image_decodable", "image")
    assert_only_tables(result, tables, {"views": 1})  # its item keeps its other view


def test_wrong_image_size(tables):
    tables["queries"].at[1, "image"] = png(7, size=SIZE + 2)
    result = run(tables)
    assert_quarantined(result, "queries", [1], "image_size", "image")
    assert hits(result, "queries", "image_size")["value"].tolist() == ["'10x10'"]


def test_wrong_channels(tables):
    tables["views"].at[9, "image"] = png(7, channels=3)
    result = run(tables)
    assert_quarantined(result, "views", [9], "image_channels", "image")
    assert hits(result, "views", "image_channels")["message"].str.contains("3 channel").all()


def test_check_images_off_skips_decoding(tables):
    tables["views"].at[4, "image"] = b"garbage"
    result = run(tables, check_images=False, max_bad_fraction=0.0)
    assert result.passed and result.quarantine.empty
    assert "not checked" in result.report_markdown()


def test_image_paths_are_confined_to_the_image_root(tables, tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.png").write_bytes(png(1))
    (tmp_path / "outside.png").write_bytes(png(2))
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    views = tables["views"]
    for row, path in {0: "a.png", 2: "../outside.png", 4: str(tmp_path / "outside.png"), 6: "link.png", 8: "missing.png"}.items():
        views.at[row, "image"] = None
        views.at[row, "image_path"] = path
    result = run(tables, image_root=root)
    assert_quarantined(result, "views", [2, 4, 6], "image_path_outside_root", "image_path")
    assert_quarantined(result, "views", [8], "image_file_missing", "image_path")
    assert result.counts["views"].bad_rows == 4  # row 0 (a.png inside the root) is fine
    without_root = run(tables)
    assert_quarantined(without_root, "views", [0, 2, 4, 6, 8], "image_file_missing", "image_path")


# --------------------------------------------------------------------------- result, report, threshold


def test_passed_flips_when_bad_fraction_passes_the_threshold(tables):
    tables["items"].loc[QUIET, "price"] = -1.0  # 1/20 items, 2/40 views: 5 % each
    assert run(tables, max_bad_fraction=0.05).passed
    tables["items"].loc[QUIET + 1, "price"] = -1.0  # 10 %
    result = run(tables, max_bad_fraction=0.05)
    assert not result.passed
    assert result.failed_tables == ["items", "views"]
    assert result.to_metrics()["passed"] is False
    assert result.to_metrics()["tables"]["items"]["bad_fraction"] == pytest.approx(0.1)


def test_report_names_table_rule_column_row_and_count(tables):
    tables["items"].loc[QUIET, "price"] = -1.0
    tables["queries"].loc[2, "user_id"] = 999
    result = run(tables, max_bad_fraction=0.01)
    report = result.report_markdown()
    assert report.startswith("# Data validation: FAILED")
    assert "## items" in report and "## queries" in report
    assert has_row(report, "positive_finite", "price", "1")
    assert f"{QUIET} [item_id={100 + QUIET}]: -1.0" in report
    assert has_row(report, "unknown_user", "user_id", "1") and "2 [query_id=502]: 999" in report
    assert has_row(report, "parent_quarantined:queries", "query_id", "4")
    counts = result.rule_counts()
    assert {"table", "rule", "column", "rows"} <= set(counts.columns)
    metrics = result.to_metrics()
    assert metrics["rules"]["items.positive_finite"] == 1 and metrics["rules"]["impressions.parent_quarantined:queries"] == 4
    with pytest.raises(ValidationFailed) as err:
        raise ValidationFailed(result)
    assert str(err.value) == report and err.value.result is result


def test_quarantine_rows_point_at_the_input(tables):
    tables["views"].at[11, "image"] = b"junk"
    tables["items"].loc[QUIET, "price"] = np.nan
    result = run(tables)
    q = result.quarantine
    assert list(q.columns) == QUARANTINE_COLUMNS
    for r in q.itertuples(index=False):
        frame = tables[r.table]
        key = ",".join(f"{k}={frame[k].iloc[r.row]}" for k in TABLES[r.table].key)
        assert r.key == key


def test_missing_and_unknown_tables_are_clear_errors(tables, tmp_path):
    with pytest.raises(ValueError, match="users"):
        run({k: v for k, v in tables.items() if k != "users"})
    with pytest.raises(ValueError, match="orders"):
        run({**tables, "orders": tables["interactions"]})
    write_tables({k: v for k, v in tables.items() if k != "impressions"}, tmp_path)
    with pytest.raises(FileNotFoundError, match="impressions"):
        validate_folder(tmp_path, image_size=SIZE, image_channels=1, max_bad_fraction=0.0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        validate_folder(tmp_path / "nowhere", image_size=SIZE, image_channels=1, max_bad_fraction=0.0)


def test_validate_folder_round_trip(tables, tmp_path):
    write_tables(tables, tmp_path)
    result = validate_folder(tmp_path, image_size=SIZE, image_channels=1, max_bad_fraction=0.0, progress=False)
    assert result.passed and result.quarantine.empty
    assert len(result.clean["views"]) == len(tables["views"])


def test_conform_is_the_schema_at_a_boundary(tables):
    items = conform("items", tables["items"].astype({"item_id": "int32"}))
    assert items["item_id"].dtype == "int64"
    bad = tables["items"].copy()
    bad.loc[3, "price"] = -5.0
    with pytest.raises(TableSchemaError, match="row 3 column price: positive_finite"):
        conform("items", bad)
    with pytest.raises(TableSchemaError, match="missing column.*brand"):
        conform("items", tables["items"].drop(columns=["brand"]))
