"""Split: every query once, no leakage across time or users, deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onevision.config import SplitConfig
from onevision.data.split import check_no_leakage, split_queries


@pytest.fixture
def queries():
    rng = np.random.default_rng(0)
    n = 1000
    return pd.DataFrame({
        "query_id": np.arange(n, dtype="int64"),
        "user_id": rng.integers(0, 80, n).astype("int64"),
        "ts": pd.to_datetime("2026-01-01", utc=True) + pd.to_timedelta(rng.integers(0, 28 * 86400, n), unit="s"),
    })


def test_time_split_is_ordered_and_complete(queries):
    cfg = SplitConfig(strategy="time", val_fraction=0.1, test_fraction=0.2)
    out = split_queries(queries, cfg, seed=0)
    assert len(out) == len(queries) and set(out["query_id"]) == set(queries["query_id"])
    counts = out["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (700, 100, 200)
    train, test = out[out.split == "train"], out[out.split == "test"]
    assert train["ts"].max() <= test["ts"].min()
    assert check_no_leakage(out, "time") == {"train_end_before_test_start": 1.0}


def test_user_split_is_disjoint_and_deterministic(queries):
    cfg = SplitConfig(strategy="user")
    a, b = split_queries(queries, cfg, seed=1), split_queries(queries, cfg, seed=1)
    pd.testing.assert_frame_equal(a, b)
    check_no_leakage(a, "user")
    users = {s: set(a.loc[a.split == s, "user_id"]) for s in ("train", "val", "test")}
    assert not users["train"] & users["test"]
    assert not split_queries(queries, cfg, seed=2)["split"].equals(a["split"])


def test_leakage_is_detected(queries):
    out = split_queries(queries, SplitConfig(strategy="time"), seed=0)
    late_train = out["ts"].idxmax()
    out.loc[late_train, "split"] = "train"
    with pytest.raises(AssertionError, match="leaks"):
        check_no_leakage(out, "time")


def test_empty_query_table_is_refused(queries):
    with pytest.raises(ValueError, match="empty"):
        split_queries(queries.iloc[:0], SplitConfig(), seed=0)
