"""Behaviour of the aligned encoder and the VRQ tokenizer on a tiny demo shop.

One tiny project (300 products of the real demo builder, a few epochs of a
narrow encoder, small codebooks) runs stages ``align_encoder`` and ``vrq``;
the tests then check what a shopper relies on: a mildly cropped or re-lit
photo of a product keeps its product's level-1 code, the alignment lifts
query -> item retrieval over the untrained network, every SID is unique and
no codebook level collapses.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from onevision import paths
from tests.model.conftest import DEMO_SHOP, NARROW_ENCODER, needs_fashion_mnist

TINY = [*DEMO_SHOP, "data.n_queries=1500", *NARROW_ENCODER, "encoder.epochs=6",
        "vrq.codebook_sizes=[32, 16, 8]", "vrq.epochs=15", "vrq.batch_size=512"]

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


@pytest.fixture(scope="module")
def project(demo_project):
    """Tiny demo tables -> split -> align_encoder -> vrq, through the stage registry."""
    root, cfg, metrics = demo_project("vrq_project", TINY, ["align_encoder", "vrq"])
    return root, cfg, metrics["align_encoder"], metrics["vrq"]


def test_stage_outputs_follow_the_contract(project):
    from onevision.encoder.api import ImageEncoder, load_item_embeddings
    from onevision.vrq.api import VRQ_DIR, VRQTokenizer, load_sid_table

    root, cfg, _, metrics = project
    item_ids, emb = load_item_embeddings(root)
    assert item_ids.dtype == np.int64 and emb.dtype == np.float32 and emb.shape == (300, cfg.encoder.embed_dim)
    encoder = ImageEncoder.load(root / "models" / "encoder")
    assert encoder.dim == cfg.encoder.embed_dim
    table = load_sid_table(root)
    assert list(table.columns) == ["item_id", "code_0", "code_1", "code_2", "code_3"]
    assert all(table[c].dtype == np.int64 for c in table.columns)
    assert sorted(table["item_id"]) == sorted(item_ids)
    assert not table.duplicated([c for c in table.columns if c.startswith("code_")]).any()  # every SID unique
    tok = VRQTokenizer.load(root / VRQ_DIR)
    assert tok.num_levels == 3 and tok.codebook_sizes == [32, 16, 8]
    by_id = table.set_index("item_id").loc[item_ids]
    codes = tok.encode(emb)
    np.testing.assert_array_equal(codes, by_id[["code_0", "code_1", "code_2"]].to_numpy())
    assert (tok.encode(tok.decode(codes)) == codes).all(1).mean() >= 0.99  # round trip on the real catalog
    written = json.loads((root / paths.metrics_file("vrq")).read_text())
    for key in ("level0_cur", "level0_perplexity", "level2_cur", "icr", "max_items_per_sid", "consistency_l1", "consistency_l12",
                "recon_mse", "prefix1_hit", "beam10_recall", "rqkmeans", "vs_rqkmeans", "dead_codes_reseeded"):
        assert key in written, key
    assert written["sids_unique"] is True
    assert metrics["cur_min"] > 0.5  # no level collapsed
    for name in ("vrq.png", "align_encoder.png"):
        assert (root / paths.PLOTS / name).stat().st_size > 0


def test_alignment_lifts_retrieval_over_the_untrained_network(project):
    _, _, enc_metrics, _ = project
    assert enc_metrics["probe_top1"] > 2 * enc_metrics["probe_top1_untrained"]
    assert enc_metrics["probe_top10"] > 0.5
    assert "e01" in enc_metrics["history"] and "probe_top1" in enc_metrics["history"]["e01"]


def test_mildly_cropped_or_relit_photo_keeps_its_level1_code(project):
    from onevision.data.augment import crop, relight
    from onevision.encoder.api import ImageEncoder, decode_image_column
    from onevision.vrq.api import VRQ_DIR, VRQTokenizer, load_sid_table

    root, cfg, _, _ = project
    encoder = ImageEncoder.load(root / "models" / "encoder")
    tok = VRQTokenizer.load(root / VRQ_DIR)
    sids = load_sid_table(root).set_index("item_id")
    views = pd.read_parquet(root / paths.VALIDATED / "views.parquet")
    clean = views[views["view_idx"] == 0].sort_values("item_id")
    images = decode_image_column(clean, channels=cfg.data.image_channels)
    want = sids.loc[clean["item_id"], "code_0"].to_numpy()
    for name, edit in (("crop 0.9", lambda im: crop(im, 0.9)), ("relight 1.25", lambda im: relight(im, 1.25)), ("relight 0.8", lambda im: relight(im, 0.8))):
        edited = np.stack([edit(im) for im in images])
        kept = (tok.encode(encoder.embed(edited))[:, 0] == want).mean()
        assert kept >= 0.7, f"{name}: only {kept:.2f} of items keep their level-1 code"
