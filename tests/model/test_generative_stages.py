"""Stages pretrain -> sft -> dpo on a tiny demo project: files in, checkpoints and metrics out, servable.

The upstream artifacts are stand-ins so this test checks *this* package's wiring
only: a randomly initialised (saved) encoder instead of stage align_encoder,
random unique SIDs instead of stage vrq, and the prepared tables copied as
validated ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from onevision import paths
from onevision.config import load_config
from onevision.retrieval import Retriever

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.n_items=120", "data.n_users=20", "data.n_queries=600", "data.n_brands=6",
    "generative.model.d_model=32", "generative.model.n_heads=2", "generative.model.n_enc_layers=1", "generative.model.n_dec_layers=1",
    "generative.model.history_len=3", "generative.decode.beam_width=10", "generative.decode.probe_queries=30",
    "generative.pretrain.epochs=2", "generative.sft.epochs=1", "generative.dpo.epochs=1", "generative.threads=1",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, object]:
    from onevision.data.stages import prepare, split
    from onevision.encoder.api import ENCODER_DIR, ImageEncoder
    from onevision.encoder.model import EncoderNet, EncoderSpec

    root = tmp_path_factory.mktemp("generative")
    cfg = load_config(REPO / "params.yaml", profile="small", overrides=TINY)
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
    return root, cfg


@pytest.mark.slow
def test_stages_write_checkpoints_metrics_and_serve(project):
    from onevision.evaluation.systems import build_systems
    from onevision.generative.retriever import OneVisionRetriever
    from onevision.stages import STAGES, run_stage

    root, cfg = project
    order = list(STAGES)
    assert order.index("mca") < order.index("pretrain") < order.index("sft") < order.index("dpo") < order.index("evaluate")
    for stage in ("pretrain", "sft", "dpo"):
        metrics = run_stage(stage, cfg, root)
        assert (root / "models" / "generative" / stage / "weights.pt").exists()
        assert (root / paths.PLOTS / f"{stage}.png").exists() and (root / paths.REPORTS / f"{stage}.md").exists()
        saved = json.loads((root / paths.metrics_file(stage)).read_text())
        assert saved["probe"]["invalid_sid_rate"] == 0.0 and 0.0 <= saved["probe"]["hr_at_10"] <= 1.0
        assert len(saved["history"]) == {"pretrain": 2, "sft": 1, "dpo": 1}[stage]
        assert metrics["probe"] == saved["probe"]
    dpo = json.loads((root / paths.metrics_file("dpo")).read_text())
    assert 0.0 <= dpo["preference_accuracy"] <= 1.0 and dpo["catalog_kl_to_reference"] >= 0.0 and dpo["n_pairs"] > 0
    assert "token_kl_to_reference" in dpo["val"]

    # the pretrain checkpoint serves everyone anonymously; sft/dpo know the users
    pre = OneVisionRetriever.load(root, "pretrain", cfg=cfg)
    assert pre.name == "onevision_pretrain" and len(pre.checkpoint.user_ids) == 0
    final = OneVisionRetriever.load(root, "dpo", cfg=cfg)
    assert final.name == "onevision" and isinstance(final, Retriever)
    queries = pd.read_parquet(root / paths.VALIDATED / "queries.parquet").head(5)
    from onevision.encoder.api import decode_image_column

    images = decode_image_column(queries)
    res = final.retrieve(images, np.array([*queries["user_id"].to_numpy()[:3], 10_000, -1]), k=12)
    assert res.item_ids.shape == (5, 12) and (res.item_ids >= 0).all()
    assert all(len(set(r)) == 12 for r in res.item_ids.tolist())

    names = [s.name for s in build_systems(cfg, root, names=["onevision", "onevision_pretrain", "onevision_sft"])]
    assert names == ["onevision", "onevision_sft", "onevision_pretrain"]


@pytest.mark.slow
def test_a_fine_tuning_stage_never_ships_a_model_worse_on_val_than_its_input(project):
    """keep_best_epoch: DPO at a destructive learning rate keeps epoch 0, i.e. the SFT weights."""
    from onevision.config import load_config
    from onevision.generative.checkpoint import checkpoint_dir, load_checkpoint
    from onevision.stages import run_stage

    root, _ = project
    if not (checkpoint_dir(root, "sft") / "weights.pt").exists():
        pytest.skip("needs the sft checkpoint of test_stages_write_checkpoints_metrics_and_serve")
    cfg = load_config(REPO / "params.yaml", profile="small", overrides=[*TINY, "generative.dpo.lr=5.0", "generative.dpo.epochs=2"])
    metrics = run_stage("dpo", cfg, root)
    assert metrics["kept_epoch"] == 0, metrics
    assert metrics["val_sim_orders_per_query_kept"] == metrics["val_sim_orders_per_query_start"]
    sft, dpo = load_checkpoint(checkpoint_dir(root, "sft")).model, load_checkpoint(checkpoint_dir(root, "dpo")).model
    for (name, a), b in zip(sft.state_dict().items(), dpo.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all("val_sim_orders_per_query" in e for e in metrics["history"].values())  # the probe is a curve too
