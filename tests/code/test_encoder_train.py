"""Encoder training plumbing on tiny synthetic images: pairs, hard-negative batches, probe, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from onevision.config import EncoderConfig
from onevision.encoder.train import AlignData, category_batches, epoch_pairs, retrieval_probe, train_encoder

TINY = EncoderConfig(epochs=2, batch_size=16, width=8, hidden_dim=16, embed_dim=8, token_grid=2, categories_per_batch=2)


@pytest.fixture(scope="module")
def data() -> AlignData:
    """12 items in 3 categories (blobs at item-specific places), 2 catalog views, train/val photos (shifted copies)."""
    rng = np.random.default_rng(0)
    n = 12
    base = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        r, c = 4 + (i % 4) * 5, 4 + (i // 4) * 7
        base[i, r : r + 6, c : c + 6] = 120 + 10 * i
    view_owner = np.repeat(np.arange(n), 2)
    views = np.stack([np.roll(base[i], rng.integers(-1, 2), axis=1) for i in view_owner])
    train_owner = np.tile(np.arange(n), 2)
    val_owner = np.arange(n)
    shift = lambda own: np.stack([np.roll(base[i], rng.integers(-2, 3), axis=0) for i in own])  # noqa: E731
    return AlignData(np.arange(100, 100 + n), np.arange(n) % 3, views, view_owner, shift(train_owner), train_owner, shift(val_owner), val_owner)


def test_epoch_pairs_cover_queries_and_items(data):
    anchors, positives, owners = epoch_pairs(data, np.random.default_rng(0))
    assert len(anchors) == len(data.train_owner) + data.n_items
    q = anchors < 0
    np.testing.assert_array_equal(data.train_owner[-anchors[q] - 1], owners[q])  # a query pairs with its own item
    np.testing.assert_array_equal(data.view_owner[positives], owners)
    np.testing.assert_array_equal(data.view_owner[anchors[~q]], owners[~q])
    assert (anchors[~q] != positives[~q]).all()  # two different catalog views


def test_category_batches_are_built_from_single_category_blocks(data):
    owners = np.repeat(np.arange(12), 4)
    batches = category_batches(owners, data.categories, batch_size=8, categories_per_batch=2, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(48))  # every pair once
    for batch in batches:
        cats = data.categories[owners[batch]]
        assert len(np.unique(cats)) <= 2 + 1  # two blocks (a block may straddle a category boundary)


def test_retrieval_probe_by_hand():
    items = np.eye(3, dtype=np.float32)
    queries = np.array([[0.9, 0.1, 0.0], [0.6, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)
    probe = retrieval_probe(items, queries, np.array([0, 1, 2]), ks=(1, 2))
    assert probe == {"top1": pytest.approx(2 / 3), "top2": 1.0}


def test_training_is_deterministic_and_logs_history(data):
    enc_a, hist_a = train_encoder(data, TINY, seed=5, image_size=28, channels=1, progress=False)
    enc_b, hist_b = train_encoder(data, TINY, seed=5, image_size=28, channels=1, progress=False)
    np.testing.assert_array_equal(enc_a.embed(data.val_images), enc_b.embed(data.val_images))
    assert [h["epoch"] for h in hist_a] == [0, 1, 2]  # epoch 0: the untrained network
    assert {"loss", "infonce", "circle", "probe_top1", "probe_top10"} <= set(hist_a[1])
    assert hist_a[1]["loss"] == hist_b[1]["loss"]


def test_category_objective_trains_the_same_network(data):
    enc, hist = train_encoder(data, TINY, seed=5, image_size=28, channels=1, progress=False, objective="category", probe_untrained=False)
    assert [h["epoch"] for h in hist] == [1, 2] and enc.dim == TINY.embed_dim
