"""What other stages use of the VRQ tokenizer: the SID table and the saved tokenizer.

::

    from onevision.vrq.api import VRQTokenizer, load_sid_table, sid_columns

    table = load_sid_table(root)          # item_id, code_0 .. code_L (code_L: disambiguation)
    tok = VRQTokenizer.load(root / VRQ_DIR)
    codes = tok.encode(query_emb)         # (N, L) int64, before disambiguation
    approx = tok.decode(codes)            # (N, dim) reconstruction
    tok.num_levels, tok.codebook_sizes    # L, [K_0, ..., K_{L-1}]

Stage ``vrq`` writes ``models/vrq/`` and ``data/sids/sid_table.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from onevision import paths
from onevision.vrq.quantizer import VRQTokenizer, disambiguate

__all__ = ["VRQTokenizer", "VRQ_DIR", "SID_TABLE", "load_sid_table", "sid_columns", "build_sid_table"]

VRQ_DIR = paths.MODELS / "vrq"
SID_TABLE = paths.DATA / "sids" / "sid_table.parquet"


def sid_columns(num_levels: int) -> list[str]:
    """Column names of a SID table for a tokenizer of ``num_levels`` levels (+1 disambiguation)."""
    return [f"code_{i}" for i in range(num_levels + 1)]


def build_sid_table(item_ids: np.ndarray, codes: np.ndarray) -> pd.DataFrame:
    """item_id + the L tokenizer codes + the disambiguation code, sorted by item_id; SIDs unique."""
    item_ids = np.asarray(item_ids, np.int64)
    full = np.concatenate([codes.astype(np.int64), disambiguate(codes, item_ids)[:, None]], axis=1)
    table = pd.DataFrame(full, columns=sid_columns(codes.shape[1]))
    table.insert(0, "item_id", item_ids)
    table = table.sort_values("item_id", kind="stable").reset_index(drop=True)
    if table.duplicated(sid_columns(codes.shape[1])).any():  # cannot happen: disambiguation is a rank within equal codes
        raise AssertionError("SIDs are not unique after disambiguation")
    return table


def load_sid_table(root: str | Path) -> pd.DataFrame:
    """The SID table under project ``root``: item_id (int64), code_0..code_L (int64)."""
    path = Path(root) / SID_TABLE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run stage vrq")
    return pd.read_parquet(path)
