"""Expectations on the Fashion-MNIST demo dataset (onevision.data.demo)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from onevision.config import load_config
from onevision.data.demo import build_demo
from onevision.data.fashion_mnist import CLASS_NAMES, FashionMNISTMissing, check_files, load_fashion_mnist
from onevision.data.images import decode_image
from onevision.data.tables import TABLES, read_tables, write_tables
from tests.data.conftest import tiny_config
from tests.support.defaults import default_params_file


def _file_hashes(tables: dict[str, pd.DataFrame], folder: Path) -> dict[str, str]:
    paths = write_tables(tables, folder)
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in paths.items()}


def test_same_seed_gives_identical_bytes(cfg, tables, tmp_path):
    again = build_demo(cfg, progress=False)
    assert _file_hashes(tables, tmp_path / "a") == _file_hashes(again, tmp_path / "b")


def test_other_seed_gives_other_data(tables):
    other = build_demo(tiny_config("seed=1"), progress=False)
    assert not other["items"]["price"].equals(tables["items"]["price"])
    assert not other["queries"]["item_id"].equals(tables["queries"]["item_id"])
    assert other["views"]["image"].iloc[1] != tables["views"]["image"].iloc[1]


def test_columns_and_dtypes_match_the_canonical_tables(tables):
    assert set(tables) == set(TABLES)
    for name, frame in tables.items():
        expected = TABLES[name].dtypes
        assert list(frame.columns) == list(expected), name
        for col, dtype in expected.items():
            if dtype == "string":
                assert isinstance(frame[col].dtype, pd.StringDtype), (name, col, frame[col].dtype)
            else:
                assert str(frame[col].dtype) == dtype, (name, col, frame[col].dtype)
        assert not frame.duplicated(list(TABLES[name].key)).any(), f"{name}: duplicate key"


def test_tables_round_trip_through_parquet(tables, tmp_path):
    write_tables(tables, tmp_path)
    back = read_tables(tmp_path)
    for name, frame in tables.items():
        assert len(back[name]) == len(frame)
        assert list(back[name].columns) == list(frame.columns)
    assert back["queries"]["ts"].dtype == tables["queries"]["ts"].dtype
    assert list(back["user_tastes"]["favorite_brands"].iloc[0]) == tables["user_tastes"]["favorite_brands"].iloc[0]


def test_sizes_follow_the_config(cfg, tables):
    d = cfg.data
    assert len(tables["items"]) == d.n_items
    assert len(tables["users"]) == len(tables["user_tastes"]) == d.n_users
    assert len(tables["queries"]) == d.n_queries
    assert len(tables["impressions"]) == d.n_queries * d.impressions_per_query
    assert tables["items"]["brand"].nunique() <= d.n_brands


def test_every_item_has_its_views(cfg, tables):
    views = tables["views"]
    counts = views.groupby("item_id")["view_idx"].agg(["count", "min", "max"])
    assert set(counts.index) == set(tables["items"]["item_id"])
    assert (counts["count"] == cfg.data.views_per_item).all()
    assert (counts["max"] == cfg.data.views_per_item - 1).all()
    assert views["image_path"].isna().all()


def test_images_decode_to_image_size(cfg, tables):
    s = cfg.data.image_size
    for frame in (tables["views"].iloc[::97], tables["queries"].iloc[::97]):
        for blob in frame["image"]:
            assert decode_image(blob).shape == (s, s)


def test_items_are_plausible(tables):
    items = tables["items"]
    assert (items["price"] > 0).all() and np.isfinite(items["price"]).all()
    assert (items["price"] == items["price"].round(2)).all()
    assert set(items["category"]) <= set(range(len(CLASS_NAMES)))
    assert (items["category_name"] == items["category"].map(dict(enumerate(CLASS_NAMES)))).all()
    # brand tiers: the same category costs clearly more at some brands than at others
    medians = items.groupby(["category", "brand"])["price"].median()
    spread = medians.groupby(level=0).agg(lambda m: m.max() / m.min())
    assert spread.max() > 1.8


def test_user_tastes_are_valid(tables):
    tastes = tables["user_tastes"]
    affinity = np.stack(tastes["category_affinity"].map(np.asarray))
    assert affinity.shape[1] == len(CLASS_NAMES)
    np.testing.assert_allclose(affinity.sum(axis=1), 1.0, atol=1e-9)
    assert np.median(affinity.max(axis=1)) > 0.35  # concentrated: most users have a clear favourite
    n_fav = tastes["favorite_brands"].map(len)
    assert n_fav.between(1, 3).all()
    assert set().union(*tastes["favorite_brands"]) <= set(tables["items"]["brand"])
    assert (tastes["brand_weight"] >= 0).all() and (tastes["price_sensitivity"] >= 0).all()


def test_queries_are_a_time_ordered_log(cfg, tables):
    q = tables["queries"]
    assert (q["query_id"].to_numpy() == np.arange(len(q))).all()
    assert q["ts"].is_monotonic_increasing
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert q["ts"].min() >= start and q["ts"].max() < start + pd.Timedelta(days=cfg.data.days)
    signup = q.merge(tables["users"], on="user_id")
    assert (signup["ts"] >= start + pd.to_timedelta(signup["signup_day"].clip(lower=0), unit="D")).all()
    # activity varies: some users search far more than others
    per_user = q.groupby("user_id").size()
    assert per_user.max() > 3 * per_user.median()


def test_query_photos_are_harder_than_catalog_views(tables):
    views = tables["views"]
    clean = {i: decode_image(b).astype(np.int16) for i, b in zip(views.loc[views["view_idx"] == 0, "item_id"], views.loc[views["view_idx"] == 0, "image"], strict=True)}
    others = views[views["view_idx"] > 0].iloc[:600]
    catalog_diff = np.mean([np.abs(decode_image(b) - clean[i]).mean() for i, b in zip(others["item_id"], others["image"], strict=True)])
    queries = tables["queries"].iloc[:600]
    query_diff = np.mean([np.abs(decode_image(b) - clean[i]).mean() for i, b in zip(queries["item_id"], queries["image"], strict=True)])
    assert catalog_diff > 1.0  # the catalog views are not copies
    assert query_diff > 1.5 * catalog_diff


def test_query_targets_lean_to_user_tastes(tables):
    q = tables["queries"].merge(tables["items"][["item_id", "category"]], on="item_id")
    top = tables["user_tastes"].set_index("user_id")["category_affinity"].map(lambda a: int(np.argmax(a)))
    share_top = (q["category"].to_numpy() == top.loc[q["user_id"]].to_numpy()).mean()
    assert share_top > 0.3  # uniform would give 0.1


def test_logging_policy_usually_shows_the_true_item(cfg, tables):
    imp, q = tables["impressions"], tables["queries"]
    assert (imp.groupby("query_id")["position"].agg(list).map(lambda p: p == list(range(cfg.data.impressions_per_query)))).all()
    assert not imp.duplicated(["query_id", "item_id"]).any()
    hits = imp.merge(q[["query_id", "item_id"]], on=["query_id", "item_id"])
    shown_rate = hits["query_id"].nunique() / len(q)
    assert 0.5 < shown_rate < 0.95
    assert hits["position"].nunique() > cfg.data.impressions_per_query // 2  # at varied positions


def test_interactions_are_consistent(tables):
    acts, imp = tables["interactions"], tables["impressions"]
    assert set(acts["action"].unique()) <= {"click", "order"}
    shown = acts.merge(imp, on=["query_id", "item_id"], how="left")
    assert shown["position"].notna().all(), "an interaction on an item that was not shown"
    clicks = acts[acts["action"] == "click"].set_index(["query_id", "item_id"]).index
    orders = acts[acts["action"] == "order"].set_index(["query_id", "item_id"]).index
    assert orders.isin(clicks).all(), "an order without its click"
    ctr = len(clicks) / len(imp)
    assert 0.005 < ctr < 0.1
    assert 0.05 < len(orders) / len(clicks) < 0.6


def test_missing_fashion_mnist_names_folder_and_package(tmp_path):
    with pytest.raises(FashionMNISTMissing, match="dataset-fashion-mnist") as err:
        check_files(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError):
        build_demo(tiny_config(f"data.fashion_mnist_dir={tmp_path}"), progress=False)


def test_fashion_mnist_reader():
    images, labels = load_fashion_mnist(load_config(default_params_file()).data.fashion_mnist_dir)
    assert images.shape == (70_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (70_000,) and set(np.unique(labels)) == set(range(10))
    assert not images.flags.writeable
