"""Query windows: the reference (the champion's training window) and the current traffic.

A window is a frame of query-log rows: the columns of the ``queries`` table
(``query_id, user_id, item_id, ts, image, image_path``), optionally with
``category``, ``price`` and ``brand`` of the product when the log carries them
(otherwise they are joined from the catalog by ``item_id``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from onevision import paths
from onevision.data.split import load_split

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT = {"m": "min", "h": "h", "d": "D", "w": "W"}


def parse_window(text: str) -> pd.Timedelta:
    """``'90m'``, ``'24h'``, ``'7d'``, ``'2w'`` -> a Timedelta (> 0)."""
    match = _WINDOW.match(text or "")
    if not match:
        raise ValueError(f"window {text!r} must look like 90m, 24h, 7d or 2w")
    value, unit = float(match.group(1)), match.group(2)
    if value <= 0:
        raise ValueError(f"window {text!r} must be positive")
    return pd.Timedelta(value, unit=_UNIT[unit])


def latest(frame: pd.DataFrame, window: str | None) -> pd.DataFrame:
    """Rows whose ``ts`` falls in the last ``window`` before the newest row (all rows when None)."""
    if window is None:
        return frame.reset_index(drop=True)
    span = parse_window(window)
    if "ts" not in frame.columns:
        raise ValueError("a --window needs a 'ts' column in the current traffic")
    ts = pd.to_datetime(frame["ts"], utc=True)
    end = ts.max()
    return frame[ts > end - span].reset_index(drop=True)


def read_window(path: str | Path) -> pd.DataFrame:
    """Current traffic from a Parquet file or a folder holding ``queries.parquet``."""
    path = Path(path)
    if path.is_dir():
        path = path / "queries.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"current traffic {path} not found (a Parquet file or a folder with queries.parquet)")
    return pd.read_parquet(path)


def split_queries(root: Path, split: str) -> pd.DataFrame:
    """The validated queries of one split of the project at ``root``."""
    root = Path(root)
    queries_path = root / paths.VALIDATED / "queries.parquet"
    if not queries_path.exists():
        raise FileNotFoundError(f"{queries_path} not found: run the prepare, validate and split stages first")
    return load_split(root / paths.SPLITS, pd.read_parquet(queries_path), split)


def sample_rows(frame: pd.DataFrame, n: int, seed: int, stream: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows drawn without replacement (seeded), in their original order."""
    if len(frame) <= n:
        return frame.reset_index(drop=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD21F7, stream]))
    rows = np.sort(rng.choice(len(frame), size=n, replace=False))
    return frame.iloc[rows].reset_index(drop=True)


def reference_window(root: Path, split: str, rows: int, seed: int) -> pd.DataFrame:
    """The reference: a seeded sample of ``rows`` queries of ``split`` (the champion's training window)."""
    return sample_rows(split_queries(root, split), rows, seed)
