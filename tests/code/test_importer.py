"""Catalog import: a folder of photos + CSVs -> canonical tables that validate clean; bad paths refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from onevision.data.images import decode_image
from onevision.data.importer import CatalogImportError, import_catalog
from onevision.data.tables import TABLES
from onevision.data.validation import validate_tables
from tests.support.defaults import write_defaults

SIZE = 16


def save(path: Path, pixels: np.ndarray, fmt: str, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt, **kwargs)


def photo(seed: int, height: int, width: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels == 3 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def shop(tmp_path: Path) -> dict[str, Path]:
    """Photos of mixed formats, sizes and modes, a catalog CSV and a query log CSV."""
    photos = tmp_path / "photos"
    save(photos / "red_shoe.png", photo(0, 40, 30), "PNG")
    save(photos / "side/red_shoe_side.jpg", photo(1, 50, 80), "JPEG", quality=90)
    save(photos / "bag.png", photo(2, 24, 24, channels=1), "PNG")  # grayscale
    save(photos / "hat.png", np.dstack([photo(3, 20, 20), np.full((20, 20), 128, np.uint8)]), "PNG")  # RGBA
    save(photos / "queries/q1.jpg", photo(4, 60, 40), "JPEG")
    save(photos / "queries/q2.png", photo(5, 32, 32), "PNG")
    catalog = write_csv(tmp_path / "catalog.csv", [
        {"item_id": 7, "image_paths": "red_shoe.png; side/red_shoe_side.jpg", "category": "shoes", "brand": "Acme", "price": 59.9},
        {"item_id": 8, "image_paths": "bag.png", "category": "bags", "brand": "Bolt", "price": 120},
        {"item_id": 9, "image_paths": "hat.png", "category": "hats", "brand": "Acme", "price": "15.5"},
    ])
    queries = write_csv(tmp_path / "queries.csv", [
        {"query_id": 1, "user_id": 42, "item_id": 7, "ts": "2026-03-01T10:00:00Z", "image_path": "queries/q1.jpg",
         "shown": "7;8;9", "clicked": "7;9", "ordered": "7"},
        {"query_id": 2, "user_id": 43, "item_id": 8, "ts": "2026-03-03 09:30:00", "image_path": "queries/q2.png",
         "shown": "9;8", "clicked": "", "ordered": ""},
    ])
    return {"root": tmp_path, "photos": photos, "catalog": catalog, "queries": queries}


def run_import(shop, **kwargs):
    args = {"queries_csv": shop["queries"], "image_size": SIZE, "image_channels": 3, **kwargs}
    return import_catalog(shop["catalog"], shop["photos"], **args)


def validate(tables, shop, channels: int = 3):
    return validate_tables(tables, image_root=shop["photos"], image_size=SIZE, image_channels=channels, max_bad_fraction=0.0, progress=False)


def test_round_trip_validates_clean(shop):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shop["photos"].rglob("*") if p.is_file()}
    tables = run_import(shop)
    result = validate(tables, shop)
    assert result.passed and result.quarantine.empty, result.report_markdown()
    for name, frame in tables.items():
        assert list(frame.columns) == list(TABLES[name].columns)
    items, views = tables["items"], tables["views"]
    assert items["item_id"].tolist() == [7, 8, 9] and items["price"].dtype == "float64"
    # Names coded in sorted order, names kept.
    assert dict(zip(items["category_name"], items["category"], strict=True)) == {"bags": 0, "hats": 1, "shoes": 2}
    assert views["item_id"].tolist() == [7, 7, 8, 9] and views["view_idx"].tolist() == [0, 1, 0, 0]
    for image in [*views["image"], *tables["queries"]["image"]]:
        assert decode_image(image).shape == (SIZE, SIZE, 3)
    assert views["image_path"].isna().all()
    # Log -> users, impressions in shown order, clicks and orders.
    assert tables["users"]["user_id"].tolist() == [42, 43]
    assert tables["users"]["signup_day"].tolist() == [0, 2]
    assert str(tables["queries"]["ts"].dtype) == "datetime64[ns, UTC]"
    imp = tables["impressions"]
    assert imp[imp["query_id"] == 1][["position", "item_id"]].values.tolist() == [[0, 7], [1, 8], [2, 9]]
    inter = tables["interactions"]
    assert sorted(map(tuple, inter.values.tolist())) == [(1, 7, "click"), (1, 7, "order"), (1, 9, "click")]
    # Photos are read, never written.
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shop["photos"].rglob("*") if p.is_file()}
    assert after == before


def test_import_is_deterministic_and_grayscale_works(shop):
    a, b = run_import(shop, image_channels=1), run_import(shop, image_channels=1)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert decode_image(a["views"]["image"].iloc[0]).shape == (SIZE, SIZE)
    assert validate(a, shop, channels=1).passed


def test_catalog_only_gives_empty_event_tables(shop):
    tables = import_catalog(shop["catalog"], shop["photos"], image_size=SIZE, image_channels=3)
    for name in ("users", "queries", "impressions", "interactions"):
        assert tables[name].empty and list(tables[name].columns) == list(TABLES[name].columns)
    assert validate(tables, shop).passed


def test_integer_categories_are_kept(shop, tmp_path):
    catalog = write_csv(tmp_path / "int_categories.csv", [
        {"item_id": 1, "image_paths": "bag.png", "category": 3, "brand": "A", "price": 1.0},
        {"item_id": 2, "image_paths": "hat.png", "category": 0, "brand": "B", "price": 2.0},
    ])
    items = import_catalog(catalog, shop["photos"], image_size=SIZE, image_channels=3)["items"]
    assert items["category"].tolist() == [3, 0] and items["category"].dtype == "int64"


def test_exif_orientation_is_applied(shop, tmp_path):
    # 40 wide x 20 high: left half black, right half white. EXIF 6 = rotate 90° clockwise to view,
    # so the upright photo is 20 wide x 40 high with black on top.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    save(shop["photos"] / "rotated.jpg", pixels, "JPEG", exif=exif.tobytes(), quality=95)
    catalog = write_csv(tmp_path / "rotated.csv", [{"item_id": 1, "image_paths": "rotated.jpg", "category": "x", "brand": "A", "price": 1}])
    out = decode_image(import_catalog(catalog, shop["photos"], image_size=SIZE, image_channels=1)["views"]["image"].iloc[0])
    assert out[: SIZE // 4].mean() < 60 and out[-SIZE // 4 :].mean() > 200


@pytest.mark.parametrize("bad_path", ["../outside.png", "photos/../../outside.png", "ABSOLUTE", "escape.png"])
def test_paths_escaping_the_image_folder_are_refused(shop, tmp_path, bad_path):
    outside = tmp_path / "outside.png"
    save(outside, photo(9, 16, 16), "PNG")
    (shop["photos"] / "escape.png").symlink_to(outside)  # a symlink out of the folder
    if bad_path == "ABSOLUTE":
        bad_path = str(outside)
    catalog = write_csv(tmp_path / "bad.csv", [
        {"item_id": 1, "image_paths": "bag.png", "category": "x", "brand": "A", "price": 1},
        {"item_id": 2, "image_paths": f"hat.png;{bad_path}", "category": "x", "brand": "A", "price": 1},
    ])
    with pytest.raises(CatalogImportError) as err:
        import_catalog(catalog, shop["photos"], image_size=SIZE, image_channels=3)
    message = str(err.value)
    assert "line 3" in message and "item_id 2" in message and repr(bad_path) in message and "outside" in message


def test_query_photo_escaping_is_refused(shop, tmp_path):
    queries = write_csv(tmp_path / "bad_queries.csv", [
        {"query_id": 5, "user_id": 1, "item_id": 7, "ts": "2026-03-01T10:00:00Z", "image_path": "../catalog.csv"},
    ])
    with pytest.raises(CatalogImportError, match=r"line 2 \(query_id 5\).*'\.\./catalog\.csv'"):
        run_import(shop, queries_csv=queries)


def test_missing_columns_are_named(shop, tmp_path):
    catalog = pd.read_csv(shop["catalog"]).drop(columns=["price", "brand"])
    catalog.to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(CatalogImportError, match="missing column.*brand, price"):
        import_catalog(tmp_path / "short.csv", shop["photos"], image_size=SIZE, image_channels=3)
    log = pd.read_csv(shop["queries"]).drop(columns=["ts"])
    log.to_csv(tmp_path / "short_log.csv", index=False)
    with pytest.raises(CatalogImportError, match="query log .* missing column.*ts"):
        run_import(shop, queries_csv=tmp_path / "short_log.csv")
    with pytest.raises(FileNotFoundError, match="no_such.csv"):
        import_catalog(tmp_path / "no_such.csv", shop["photos"], image_size=SIZE, image_channels=3)


def test_undecodable_photo_is_kept_raw_and_quarantined(shop, tmp_path):
    broken = b"\xff\xd8\xff\xe0 this is not really a jpeg"
    (shop["photos"] / "broken.jpg").write_bytes(broken)
    catalog = write_csv(tmp_path / "broken.csv", [
        {"item_id": 1, "image_paths": "bag.png;broken.jpg", "category": "x", "brand": "A", "price": 1},
        {"item_id": 2, "image_paths": "broken.jpg", "category": "x", "brand": "A", "price": 1},
        {"item_id": 3, "image_paths": "hat.png", "category": "x", "brand": "A", "price": 1},
    ])
    tables = import_catalog(catalog, shop["photos"], image_size=SIZE, image_channels=3)
    assert tables["views"]["image"].iloc[1] == broken  # stored as found
    assert (shop["photos"] / "broken.jpg").read_bytes() == broken
    result = validate(tables, shop)
    q = result.quarantine
    decodable = q[q["rule"] == "image_decodable"]
    assert decodable["table"].tolist() == ["views", "views"] and decodable["row"].tolist() == [1, 2]
    # Item 2 had only the broken photo: it has no view left.
    assert q[q["rule"] == "item_without_views"]["key"].tolist() == ["item_id=2"]
    assert result.clean["items"]["item_id"].tolist() == [1, 3]


def test_bad_values_reach_validation_instead_of_stopping_the_import(shop, tmp_path):
    (shop["photos"] / "gone.png").unlink(missing_ok=True)
    catalog = write_csv(tmp_path / "values.csv", [
        {"item_id": 1, "image_paths": "bag.png", "category": "x", "brand": "A", "price": "cheap"},
        {"item_id": 2, "image_paths": "hat.png", "category": "x", "brand": "", "price": 3},
        {"item_id": 3, "image_paths": "gone.png", "category": "x", "brand": "C", "price": 4},
        {"item_id": 4, "image_paths": "bag.png", "category": "x", "brand": "D", "price": 5},
        {"item_id": 4, "image_paths": "hat.png", "category": "x", "brand": "E", "price": 6},
    ])
    tables = import_catalog(catalog, shop["photos"], image_size=SIZE, image_channels=3)
    assert len(tables["views"]) == 4  # the repeated item 4's photo is not attached to the first item 4
    q = validate(tables, shop).quarantine
    found = {(r.table, r.row, r.column, r.rule) for r in q.itertuples(index=False)}
    assert ("items", 0, "price", "dtype") in found
    assert ("items", 1, "brand", "not_null") in found
    assert ("views", 2, "image_path", "image_file_missing") in found
    assert ("items", 4, "item_id", "unique_key") in found


def test_the_readme_import_then_validate_agree_on_size_and_channels(shop, tmp_path):
    """No --image-size/--channels: import takes the project's data.image_size/image_channels, as validate does."""

    from typer.testing import CliRunner

    from onevision.app.cli import app

    project = tmp_path / "project"
    project.mkdir()
    write_defaults(project)  # 28 px grayscale
    runner = CliRunner()
    out = project / "my-data"
    imported = runner.invoke(app, ["data", "import", "--catalog", str(shop["catalog"]), "--images", str(shop["photos"]),
                                   "--queries", str(shop["queries"]), "--out", str(out), "--root", str(project)])
    assert imported.exit_code == 0, imported.output
    checked = runner.invoke(app, ["data", "validate", str(out), "--root", str(project)])
    assert checked.exit_code == 0, checked.output
    assert "No row was quarantined" in checked.output


def test_a_missing_photo_is_named_with_its_csv_line(shop, caplog):
    (shop["photos"] / "bag.png").unlink()
    with caplog.at_level("WARNING"):
        tables = run_import(shop)
    text = caplog.text
    assert "1 photo(s) not found" in text and "line 3" in text and "'bag.png'" in text and "add the files or fix the paths" in text
    result = validate_tables(tables, image_root=None, image_size=SIZE, image_channels=3, max_bad_fraction=1.0, progress=False)
    missing = result.quarantine[result.quarantine["rule"] == "image_file_missing"]
    assert len(missing) and missing["message"].str.contains("pass the photo folder").all()
