"""A tiny trained project root for promotion and serving tests (seconds to build, no pipeline run).

It holds what a real project holds for a ``knn`` bundle: an aligned encoder
(small, untrained but real), item embeddings, a SID table and the metrics
files the gates read. Item images are distinct synthetic patterns, so a query
with an item's own image must return that item first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tests.support.defaults import default_params

N_ITEMS = 40
SIDE = 28
REVIEWERS = ["alice", "bob"]

GOOD_METRICS = {
    "knn": {"hr@10": 0.62, "ndcg@10": 0.45, "sim_orders_per_1k": 31.0, "latency_p95_ms": 4.0, "invalid_sid_rate": 0.0},
    "mca": {"hr@10": 0.60, "ndcg@10": 0.44, "sim_orders_per_1k": 30.0, "latency_p95_ms": 9.0},
}


def item_images(n: int = N_ITEMS, seed: int = 0) -> np.ndarray:
    """(n, 28, 28) uint8: a bright block at a different place and size per item on textured noise."""
    rng = np.random.default_rng(seed)
    images = (rng.random((n, SIDE, SIDE)) * 60).astype(np.uint8)
    for i in range(n):
        size = 6 + i % 8
        r, c = (i * 5) % (SIDE - size), (i * 11) % (SIDE - size)
        images[i, r : r + size, c : c + size] = 200 + (i % 5) * 10
    return images


def write_metrics(root: Path, evaluate: dict | None = None, validate: dict | None = None, vrq: dict | None = None) -> None:
    metrics = root / "metrics"
    metrics.mkdir(exist_ok=True)
    (metrics / "evaluate.json").write_text(json.dumps(evaluate if evaluate is not None else GOOD_METRICS))
    (metrics / "validate.json").write_text(json.dumps(validate if validate is not None else {"passed": True, "rows_items": N_ITEMS}))
    (metrics / "vrq.json").write_text(json.dumps(vrq if vrq is not None else {"cur_min": 0.6, "icr": 0.9}))


def make_tiny_project(dest: Path, **overrides) -> Path:
    """A project root with params.yaml (knn bundle, reviewers alice and bob), artifacts and good metrics."""
    import torch

    from onevision.encoder.api import ImageEncoder, save_item_embeddings
    from onevision.encoder.model import EncoderNet, EncoderSpec

    dest.mkdir(parents=True, exist_ok=True)
    raw = default_params()
    raw["overrides"] = {
        "registry": {"reviewers": REVIEWERS, "approval": "registry", "approval_poll_s": 1, "gates": {"candidate_system": "knn"}},
        "serving": {"retriever": "knn"},
        **overrides,
    }
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    torch.manual_seed(0)
    net = EncoderNet(EncoderSpec(width=8, hidden_dim=32, embed_dim=16, token_grid=2))
    images = item_images()
    # Untrained, but batch-norm statistics of the catalog spread the embeddings apart (max cosine ~0.9, not ~1).
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(net.preprocess(torch.from_numpy(images)))
    encoder = ImageEncoder(net)
    encoder.save(dest / "models" / "encoder")
    item_ids = np.arange(100, 100 + N_ITEMS, dtype=np.int64)
    save_item_embeddings(dest, item_ids, encoder.embed(images))
    sids = dest / "data" / "sids"
    sids.mkdir(parents=True, exist_ok=True)
    codes = np.stack([np.arange(N_ITEMS) % 4, np.arange(N_ITEMS) // 4 % 5, np.arange(N_ITEMS) // 20], axis=1)
    table = pd.DataFrame(codes, columns=["code_0", "code_1", "code_2"])
    table.insert(0, "item_id", item_ids)
    table.to_parquet(sids / "sid_table.parquet", index=False)
    write_metrics(dest)
    return dest


def copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def add_generative_checkpoint(root: Path, stage: str = "dpo") -> Path:
    """An untrained but real generative checkpoint over the tiny project's SID table (users 1, 2, 3 known)."""
    import torch

    from onevision.encoder.api import ImageEncoder
    from onevision.generative.checkpoint import checkpoint_dir, save_checkpoint
    from onevision.generative.model import ACTION_CLICK, ACTION_ORDER, GeneratorConfig, SIDGenerator

    encoder = ImageEncoder.load(root / "models" / "encoder")
    table = pd.read_parquet(root / "data" / "sids" / "sid_table.parquet")
    sizes = tuple(int(table[c].max()) + 1 for c in table.columns if c != "item_id")
    torch.manual_seed(0)
    model = SIDGenerator(GeneratorConfig(
        codebook_sizes=sizes, token_dim=encoder.token_dim, n_visual_tokens=encoder.num_tokens, embed_dim=encoder.dim,
        n_users=3, history_len=2, d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2, dropout=0.0,
    ))
    history = pd.DataFrame({"user_id": [1, 1, 2], "slot": [0, 1, 0], "item_id": [101, 105, 110], "action": [ACTION_ORDER, ACTION_CLICK, ACTION_CLICK]})
    return save_checkpoint(checkpoint_dir(root, stage), model, np.array([1, 2, 3]), history)
