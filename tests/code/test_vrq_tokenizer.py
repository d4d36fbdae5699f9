"""VRQ tokenizer invariants: round trip, determinism, unique SIDs, metrics on hand-made codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onevision.config import VRQConfig
from onevision.reproducible import deterministic_torch
from onevision.vrq.api import build_sid_table, load_sid_table, sid_columns
from onevision.vrq.metrics import (
    codebook_usage,
    collision_stats,
    constrained_beam,
    prefix_consistency,
    tokenizer_report,
)
from onevision.vrq.quantizer import VRQTokenizer, disambiguate
from onevision.vrq.train import VRQTrainingData, finetune, rq_kmeans, train_vrq

TINY = VRQConfig(codebook_sizes=[8, 4, 4], kmeans_iters=10, epochs=5, batch_size=64, consistency_levels=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def catalog():
    """60 items in 6 categories (clustered unit vectors), 3 noisy views each, 2 held-out query views each."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16))
    categories = np.repeat(np.arange(6), 10)
    items = _unit(centres[categories] + 0.5 * rng.standard_normal((60, 16)))
    owner = np.repeat(np.arange(60), 3)
    views = _unit(items[owner] + 0.08 * rng.standard_normal((180, 16)))
    q_owner = np.repeat(np.arange(60), 2)
    queries = _unit(items[q_owner] + 0.12 * rng.standard_normal((120, 16)))
    return {"items": items, "categories": categories, "owner": owner, "views": views, "q_owner": q_owner, "queries": queries}


@pytest.fixture(scope="module")
def trained(catalog):
    data = VRQTrainingData(catalog["items"], catalog["views"], catalog["owner"], catalog["categories"])
    return train_vrq(data, TINY, seed=3)


def test_encode_decode_shapes_and_properties(trained):
    tok, _, _ = trained
    assert tok.num_levels == 3 and tok.codebook_sizes == [8, 4, 4] and tok.dim == 16
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    codes = tok.encode(x)
    assert codes.shape == (5, 3) and codes.dtype == np.int64
    assert tok.decode(codes).shape == (5, 16)
    # a prefix decodes to the partial sum; a SID's disambiguation column is ignored
    np.testing.assert_allclose(tok.decode(codes[:, :1]), tok.codebooks[0][codes[:, 0]])
    np.testing.assert_allclose(tok.decode(np.c_[codes, np.arange(5)]), tok.decode(codes))
    with pytest.raises(ValueError, match="outside"):
        tok.decode(np.array([[8, 0, 0]]))


def test_round_trip_codes_reconstruction_codes(trained, catalog):
    tok, base, _ = trained
    for t in (tok, base):
        codes = t.encode(catalog["items"])
        assert (t.encode(t.decode(codes)) == codes).all()


def test_greedy_residual_encoding_matches_definition():
    rng = np.random.default_rng(0)
    books = [rng.standard_normal((5, 3)).astype(np.float32), 0.3 * rng.standard_normal((4, 3)).astype(np.float32)]
    tok = VRQTokenizer(books)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    codes = tok.encode(x)
    for row, c in zip(x, codes, strict=True):
        k0 = np.argmin(((row - books[0]) ** 2).sum(1))
        k1 = np.argmin(((row - books[0][k0] - books[1]) ** 2).sum(1))
        assert (c == [k0, k1]).all()


def test_training_is_deterministic_for_a_seed(catalog, trained):
    data = VRQTrainingData(catalog["items"], catalog["views"], catalog["owner"], catalog["categories"])
    again, _, _ = train_vrq(data, TINY, seed=3)
    tok, _, _ = trained
    for a, b in zip(again.codebooks, tok.codebooks, strict=True):
        np.testing.assert_array_equal(a, b)
    ids = np.arange(60) * 7
    t1 = build_sid_table(ids, tok.encode(catalog["items"]))
    t2 = build_sid_table(ids, again.encode(catalog["items"]))
    assert t1.equals(t2)


def test_disambiguation_by_hand():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    ids = np.array([30, 10, 20, 5, 40])
    # group (1, 2) holds ids 30, 20, 5 -> 2, 1, 0 in id order; the others are alone -> 0
    assert disambiguate(codes, ids).tolist() == [2, 0, 1, 0, 0]


def test_sid_table_is_unique_even_when_codes_collide(tmp_path):
    codes = np.zeros((50, 2), np.int64)  # every item on one code tuple: a collapsed tokenizer
    codes[:10, 1] = 1
    table = build_sid_table(np.arange(100, 150), codes)
    assert list(table.columns) == ["item_id", *sid_columns(2)] == ["item_id", "code_0", "code_1", "code_2"]
    assert all(table[c].dtype == np.int64 for c in table.columns)
    assert not table.duplicated(sid_columns(2)).any()
    assert table["code_2"].max() == 39
    out = tmp_path / "data" / "sids" / "sid_table.parquet"
    out.parent.mkdir(parents=True)
    table.to_parquet(out, index=False)
    assert load_sid_table(tmp_path).equals(table)


def test_save_load_round_trip(trained, tmp_path, catalog):
    tok, _, _ = trained
    tok.save(tmp_path / "vrq")
    back = VRQTokenizer.load(tmp_path / "vrq")
    assert back.codebook_sizes == tok.codebook_sizes
    np.testing.assert_array_equal(back.encode(catalog["queries"]), tok.encode(catalog["queries"]))
    with pytest.raises(FileNotFoundError, match="run stage vrq"):
        VRQTokenizer.load(tmp_path / "missing")


def test_usage_and_collision_metrics_by_hand():
    codes = np.array([[0, 1], [0, 1], [1, 0], [2, 0]])
    usage = codebook_usage(codes, [4, 2])
    assert usage[0]["cur"] == 0.75 and usage[0]["dead"] == 1
    p = np.array([0.5, 0.25, 0.25])
    assert usage[0]["perplexity"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert usage[1]["perplexity"] == pytest.approx(2.0)
    stats = collision_stats(codes)
    assert stats == {"icr": 0.5, "max_items_per_sid": 2, "distinct_sids": 3}
    assert prefix_consistency(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 1]]), 1) == 1.0
    assert prefix_consistency(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 1]]), 2) == 0.5


def test_constrained_beam_finds_items_themselves(trained, catalog):
    tok, _, _ = trained
    codes = tok.encode(catalog["items"])
    paths = constrained_beam(tok, catalog["items"], codes, beam=1)
    assert (paths[:, 0] == codes).all()  # greedy = beam 1, and an item's own path exists
    wide = constrained_beam(tok, catalog["queries"], codes, beam=5)
    valid = {tuple(c) for c in codes}
    assert all(tuple(p) in valid for p in wide.reshape(-1, 3) if p[0] >= 0)  # only existing SIDs come out


def test_report_has_every_metric_and_no_level_collapsed(trained, catalog):
    tok, _, log = trained
    m = tokenizer_report(tok, catalog["items"], query_emb=catalog["queries"], query_owner=catalog["q_owner"], catalog_emb=catalog["views"], catalog_owner=catalog["owner"])
    for key in ("level0_cur", "level0_perplexity", "icr", "max_items_per_sid", "consistency_l1", "consistency_l12",
                "recon_mse", "round_trip", "prefix1_hit", "beam10_recall", "catalog_view_consistency_l1"):
        assert key in m, key
    assert all(m[f"level{lv}_used"] > 1 for lv in range(3))
    assert len(log.history) == TINY.epochs and len(log.dead_codes_reseeded) == 3


def test_rq_kmeans_with_category_level1(catalog):
    tok = rq_kmeans(catalog["items"], [12, 4], iters=5, seed=0, categories=catalog["categories"])
    assert tok.codebook_sizes == [12, 4]
    with pytest.raises(ValueError, match="number of categories"):
        rq_kmeans(catalog["items"], [4, 4], iters=5, seed=0, categories=catalog["categories"])


def test_consistency_levels_beyond_codebooks_fail(catalog):
    data = VRQTrainingData(catalog["items"], catalog["views"], catalog["owner"])
    with pytest.raises(ValueError, match="consistency_levels"):
        train_vrq(data, VRQConfig(codebook_sizes=[8], consistency_levels=2, epochs=1), seed=0)


def test_finetuning_repeats_bit_for_bit_where_threads_share_the_work():
    """With the stages' deterministic kernels, three fine-tunings give one set of codebooks. Without them, the
    backward of ``book[codes]`` adds with atomics across threads: three runs at this size gave three codebooks."""
    rng = np.random.default_rng(0)
    items = _unit(rng.standard_normal((2000, 64)))
    owner = np.repeat(np.arange(2000), 2)
    views = _unit(items[owner] + 0.1 * rng.standard_normal((4000, 64)))
    data = VRQTrainingData(items, views, owner)
    cfg = VRQConfig(codebook_sizes=[16, 8], kmeans_iters=5, epochs=2, batch_size=1024, consistency_levels=2)
    base = rq_kmeans(items, [16, 8], iters=5, seed=0)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        deterministic_torch()
        runs = []
        for _ in range(3):
            tok = VRQTokenizer([b.copy() for b in base.codebooks])
            finetune(tok, data, cfg, seed=0, progress_log=False)
            runs.append(b"".join(b.tobytes() for b in tok.codebooks))
    finally:
        torch.use_deterministic_algorithms(was)
    assert runs[0] == runs[1] == runs[2]
