"""Train / validation / test split of the query log, without leakage.

``time``: queries are ordered by timestamp and cut so the last ``test_fraction``
of traffic is test and the slice before it validation (models never see the
future). ``user``: users are assigned whole to one split (no shopper appears in
two), for cold-start style evaluation.

Only the assignment is written (``query_id -> split``); every consumer joins
it to the validated tables, so images are stored once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from onevision.config import SplitConfig

SPLITS = ("train", "val", "test")
ASSIGNMENT_FILE = "assignment.parquet"


def split_queries(queries: pd.DataFrame, cfg: SplitConfig, seed: int) -> pd.DataFrame:
    """Return ``DataFrame(query_id, user_id, ts, split)`` covering every query once."""
    if queries.empty:
        raise ValueError("cannot split an empty query table")
    frame = queries[["query_id", "user_id", "ts"]].copy()
    n = len(frame)
    if cfg.strategy == "time":
        # Stable sort on (ts, query_id): ties broken deterministically.
        order = frame.sort_values(["ts", "query_id"], kind="mergesort").index
        n_test = max(1, round(n * cfg.test_fraction))
        n_val = max(1, round(n * cfg.val_fraction))
        labels = np.array(["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test)
        frame.loc[order, "split"] = labels
    else:
        users = np.sort(frame["user_id"].unique())
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117]))
        users = rng.permutation(users)
        n_test = max(1, round(len(users) * cfg.test_fraction))
        n_val = max(1, round(len(users) * cfg.val_fraction))
        if len(users) - n_test - n_val < 1:
            raise ValueError(f"user split needs more users than {len(users)}")
        split_of_user = {u: "test" for u in users[:n_test]}
        split_of_user.update({u: "val" for u in users[n_test : n_test + n_val]})
        frame["split"] = frame["user_id"].map(split_of_user).fillna("train")
    frame["split"] = frame["split"].astype("string")
    return frame.sort_values("query_id", kind="mergesort").reset_index(drop=True)


def check_no_leakage(assignment: pd.DataFrame, strategy: str) -> dict[str, float]:
    """Assert the split's promises and return the evidence as metrics."""
    if assignment["query_id"].duplicated().any():
        raise AssertionError("a query is assigned to more than one split")
    facts: dict[str, float] = {}
    if strategy == "time":
        ts = {s: assignment.loc[assignment["split"] == s, "ts"] for s in SPLITS}
        if ts["train"].max() > ts["val"].min() or ts["val"].max() > ts["test"].min():
            raise AssertionError("time split leaks: a training query is later than a val/test query")
        facts["train_end_before_test_start"] = 1.0
    else:
        users = {s: set(assignment.loc[assignment["split"] == s, "user_id"]) for s in SPLITS}
        if users["train"] & users["test"] or users["train"] & users["val"] or users["val"] & users["test"]:
            raise AssertionError("user split leaks: a user appears in two splits")
        facts["users_disjoint"] = 1.0
    return facts


def load_split(splits_dir: str | Path, queries: pd.DataFrame, split: str) -> pd.DataFrame:
    """The queries of one split (rows of the validated query table)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    assignment = pd.read_parquet(Path(splits_dir) / ASSIGNMENT_FILE, columns=["query_id", "split"])
    ids = assignment.loc[assignment["split"] == split, "query_id"]
    return queries[queries["query_id"].isin(ids)].reset_index(drop=True)
