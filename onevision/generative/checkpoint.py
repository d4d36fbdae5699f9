"""A stage's generative checkpoint: ``models/generative/<stage>/``.

    config.json          GeneratorConfig + facts (stage, training summary)
    weights.pt           the SIDGenerator state dict
    users.npy            known user ids; user id users[i] is user row i + 1 (row 0: anonymous)
    user_history.parquet the most recent TRAIN-split clicks/orders per user (user_id, slot, item_id, action),
                         slot 0 newest: the serving-time user context (absent for pretrain)

The SIDs of history items are looked up in the SID table at load time, so the
history stays valid however the trie is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from onevision import atomic, paths
from onevision.generative.leaf import LeafScorer
from onevision.generative.model import GeneratorConfig, SIDGenerator

GENERATIVE_DIR = paths.MODELS / "generative"
STAGE_NAMES = ("pretrain", "sft", "dpo")
_FORMAT = 3  # 2: geometric levels + leaf head; 3: + the shopper prefix weight
_READS = (2,)  # older formats this code still loads (2: shopper weight 0)


def build_generator(cfg: GeneratorConfig) -> SIDGenerator:
    """The network of ``cfg``, with its leaf head when it has one (``leaf_items > 0``)."""
    model = SIDGenerator(cfg)
    if cfg.leaf_items:
        model.leaf = LeafScorer(cfg.leaf_items, cfg.geo_dim or cfg.embed_dim, n_categories=cfg.leaf_categories, n_brands=cfg.leaf_brands, n_users=cfg.n_users, hidden=cfg.leaf_hidden, n_views=cfg.leaf_views)
    return model


def checkpoint_dir(root: str | Path, stage: str) -> Path:
    if stage not in STAGE_NAMES:
        raise ValueError(f"unknown generative stage {stage!r}; expected one of {STAGE_NAMES}")
    return Path(root) / GENERATIVE_DIR / stage


@dataclass
class Checkpoint:
    model: SIDGenerator
    user_ids: np.ndarray  # (U,) sorted; row of user_ids[i] is i + 1
    user_history: pd.DataFrame  # user_id, slot, item_id, action
    facts: dict

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """User ids -> model rows; unknown ids (and -1) -> 0, the anonymous row."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if len(self.user_ids) == 0:
            return np.zeros(len(user_ids), dtype=np.int64)
        pos = np.clip(np.searchsorted(self.user_ids, user_ids), 0, len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == user_ids, pos + 1, 0).astype(np.int64)


def save_checkpoint(directory: str | Path, model: SIDGenerator, user_ids: np.ndarray, user_history: pd.DataFrame | None = None, facts: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "config": model.cfg.to_dict(), "facts": facts or {}}
    atomic.write_json(directory / "config.json", meta)
    with atomic.atomic_path(directory / "weights.pt") as tmp, open(tmp, "wb") as f:  # a file object: same bytes every run
        torch.save(model.state_dict(), f)
    with atomic.atomic_path(directory / "users.npy") as tmp:
        np.save(tmp, np.asarray(user_ids, dtype=np.int64))
    history_path = directory / "user_history.parquet"
    if user_history is not None:
        with atomic.atomic_path(history_path) as tmp:
            user_history.to_parquet(tmp, index=False)
    elif history_path.exists():
        history_path.unlink()
    return directory


def load_checkpoint(directory: str | Path) -> Checkpoint:
    directory = Path(directory)
    meta_path = directory / "config.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no generative checkpoint in {directory} (expected config.json); run its stage first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") not in (_FORMAT, *_READS):
        raise ValueError(f"checkpoint in {directory} has format {meta.get('format')}, this code reads {', '.join(map(str, (*_READS, _FORMAT)))}")
    model = build_generator(GeneratorConfig(**meta["config"]))
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    state.setdefault("shopper_weight", torch.zeros(()))  # format 2: no shopper term (what those models served)
    model.load_state_dict(state)
    model.eval()
    history_path = directory / "user_history.parquet"
    history = pd.read_parquet(history_path) if history_path.exists() else pd.DataFrame(columns=["user_id", "slot", "item_id", "action"])
    return Checkpoint(model, np.load(directory / "users.npy"), history, meta.get("facts", {}))
