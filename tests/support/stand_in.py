"""A tiny demo project for the generative stages, with stand-ins for their upstream artifacts.

A randomly initialised (saved) encoder instead of stage align_encoder, random
unique SIDs instead of stage vrq, and the prepared tables copied as validated
ones: tests of pretrain -> sft -> dpo check those stages' wiring only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from onevision import paths
from onevision.config import Config, load_config, overrides_to_tree
from tests.support.defaults import default_params

TINY = [
    "data.n_items=120", "data.n_users=20", "data.n_queries=600", "data.n_brands=6",
    "generative.model.d_model=32", "generative.model.n_heads=2", "generative.model.n_enc_layers=1", "generative.model.n_dec_layers=1",
    "generative.model.history_len=3", "generative.decode.beam_width=10", "generative.decode.probe_queries=30",
    "generative.pretrain.epochs=2", "generative.sft.epochs=1", "generative.dpo.epochs=1", "generative.threads=1",
]


def stand_in_project(root: Path, overrides: list[str] = TINY) -> Config:
    """Write the generative stages' inputs under ``root`` and a params.yaml selecting them; returns the config."""
    from onevision.data.stage import prepare, split
    from onevision.encoder.api import ENCODER_DIR, ImageEncoder
    from onevision.encoder.model import EncoderNet, EncoderSpec

    params = default_params()
    params.update(profile="small", overrides=overrides_to_tree(list(overrides)))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_config(root / "params.yaml")
    prepare(cfg, root)
    shutil.copytree(root / paths.PREPARED, root / paths.VALIDATED)  # stand-in for stage validate
    split(cfg, root)
    torch.manual_seed(0)
    ImageEncoder(EncoderNet(EncoderSpec(embed_dim=16, width=8, hidden_dim=16, token_grid=2))).save(root / ENCODER_DIR)
    items = pd.read_parquet(root / paths.VALIDATED / "items.parquet")["item_id"].to_numpy()
    rng = np.random.default_rng(0)
    codes = np.array([(a, b, c) for a in range(8) for b in range(4) for c in range(5)])[rng.permutation(160)[: len(items)]]
    table = pd.DataFrame({"item_id": items, **{f"code_{i}": codes[:, i] for i in range(3)}})
    (root / "data" / "sids").mkdir(parents=True)
    table.to_parquet(root / "data" / "sids" / "sid_table.parquet", index=False)  # stand-in for stage vrq
    return cfg
