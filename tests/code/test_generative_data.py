"""From logs to examples: histories (no leakage), SFT weights, DPO pairs; the retriever's user handling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from onevision.generative.checkpoint import Checkpoint
from onevision.generative.data import (
    context_rows,
    histories_before,
    interaction_events,
    latest_history,
    personalised_examples,
    preference_pairs,
)
from onevision.generative.model import ACTION_CLICK, ACTION_ORDER, ACTION_PAD, GeneratorConfig, SIDGenerator
from onevision.generative.retriever import OneVisionRetriever
from onevision.generative.trie import SIDTrie

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def log_tables():
    """Two users; user 1 searches at t=1,2,3 h, user 2 at t=2 h. Items 10..15."""
    queries = pd.DataFrame({
        "query_id": [0, 1, 2, 3],
        "user_id": [1, 1, 1, 2],
        "item_id": [10, 11, 12, 13],
        "ts": [T0 + pd.Timedelta(hours=h) for h in (1, 2, 3, 2)],
    })
    interactions = pd.DataFrame({
        "query_id": [0, 0, 0, 1, 3, 3],
        "item_id": [10, 10, 14, 11, 13, 15],
        "action": pd.array(["click", "order", "click", "click", "click", "click"], dtype="string"),
    })
    impressions = pd.DataFrame({
        "query_id": np.repeat([0, 1, 2, 3], 3),
        "position": np.tile([0, 1, 2], 4),
        "item_id": [10, 14, 15, 11, 12, 13, 12, 10, 11, 13, 15, 14],
    })
    return queries, interactions, impressions


def trie_of_items() -> SIDTrie:
    items = np.arange(10, 16)
    return SIDTrie(np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]), items, (3, 2))


def test_events_keep_the_stronger_action_and_histories_never_look_ahead():
    queries, interactions, _ = log_tables()
    events = interaction_events(interactions, queries)
    assert len(events) == 5  # (q0, 10) click + order collapse to one order event
    assert events.set_index(["query_id", "item_id"]).loc[(0, 10), "action"] == ACTION_ORDER
    ts = queries["ts"].astype("int64").to_numpy()
    items, actions = histories_before(events, queries["user_id"].to_numpy(), ts, history_len=3)
    assert items[0].tolist() == [-1, -1, -1]  # first search: nothing before it
    assert sorted(items[1][:2].tolist()) == [10, 14] and items[1][2] == -1  # q0's events only
    assert items[2][0] == 11 and sorted(items[2][1:].tolist()) == [10, 14]  # newest first
    assert actions[2][0] == ACTION_CLICK
    assert items[3].tolist() == [-1, -1, -1]  # user 2's own events are at the same time, not before
    # unknown user
    unk, unk_actions = histories_before(events, np.array([99]), ts[:1], history_len=2)
    assert unk.tolist() == [[-1, -1]] and unk_actions.tolist() == [[ACTION_PAD, ACTION_PAD]]


def test_latest_history_is_newest_first_and_capped():
    queries, interactions, _ = log_tables()
    latest = latest_history(interaction_events(interactions, queries), history_len=2)
    u1 = latest[latest["user_id"] == 1].sort_values("slot")
    assert u1["item_id"].tolist()[0] == 11 and len(u1) == 2
    assert set(latest["user_id"]) == {1, 2}


def test_personalised_examples_weight_orders_over_clicks():
    queries, interactions, _ = log_tables()
    events = interaction_events(interactions, queries)
    trie = trie_of_items()
    items, actions = histories_before(events, queries["user_id"].to_numpy(), queries["ts"].astype("int64").to_numpy(), 2)
    rows = context_rows(np.arange(4), np.array([1, 1, 1, 2]), items, actions, trie)
    ex = personalised_examples(rows, queries["query_id"].to_numpy(), events=events, trie=trie, click_weight=1.0, order_weight=3.0)
    assert len(ex) == 5
    got = {(int(i), tuple(t.tolist())): float(w) for i, t, w in zip(ex.rows.image_idx, ex.target, ex.weight, strict=True)}
    assert got[(0, (0, 0))] == 3.0  # ordered item 10
    assert got[(0, (2, 0))] == 1.0  # clicked item 14
    assert rows.history[2, 0].tolist() == [0, 1]  # item 11's SID, newest first


def test_preference_pairs_follow_order_click_skip():
    queries, interactions, impressions = log_tables()
    events = interaction_events(interactions, queries)
    trie = trie_of_items()
    rows = context_rows(np.arange(4), np.zeros(4, np.int64), np.full((4, 1), -1), np.zeros((4, 1), np.int64), trie)
    qids = queries["query_id"].to_numpy()
    pairs = preference_pairs(rows, qids, impressions=impressions, events=events, trie=trie, pair_types=["order>click", "order>skip", "click>skip"], skip_positions=3, max_pairs_per_query=10, seed=0)
    got = {(int(i), int(trie.lookup(c[None])[0]), int(trie.lookup(r[None])[0])) for i, c, r in zip(pairs.rows.image_idx, pairs.chosen, pairs.rejected, strict=True)}
    # q0: order 10 > click 14, order 10 > skip 15, click 14 > skip 15; q1: click 11 > skips 12, 13; q3: clicks 13, 15 > skip 14
    assert got == {(0, 10, 14), (0, 10, 15), (0, 14, 15), (1, 11, 12), (1, 11, 13), (3, 13, 14), (3, 15, 14)}
    only = preference_pairs(rows, qids, impressions=impressions, events=events, trie=trie, pair_types=["order>click"], skip_positions=3, max_pairs_per_query=10, seed=0)
    assert len(only) == 1
    capped = preference_pairs(rows, qids, impressions=impressions, events=events, trie=trie, pair_types=["click>skip"], skip_positions=3, max_pairs_per_query=1, seed=0)
    assert len(capped) == 3  # one per query with a click and a skip
    with pytest.raises(ValueError, match="unknown pair types"):
        preference_pairs(rows, qids, impressions=impressions, events=events, trie=trie, pair_types=["skip>order"], skip_positions=3, max_pairs_per_query=1, seed=0)


class FakeEncoder:
    """Stands in for onevision.encoder.api.ImageEncoder: deterministic tokens from pixels."""

    dim, token_dim, num_tokens = 6, 8, 4

    def visual_tokens(self, images):
        x = torch.from_numpy(np.asarray(images, np.float32)).reshape(len(images), -1)[:, :32] / 255
        return x.reshape(len(images), 4, 8).numpy()

    def embed(self, images):
        x = torch.from_numpy(np.asarray(images, np.float32)).reshape(len(images), -1)[:, :6] + 1
        return torch.nn.functional.normalize(x, dim=1).numpy()

    def embed_and_tokens(self, images):
        return self.embed(images), self.visual_tokens(images)


def test_retriever_serves_known_unknown_and_anonymous_users():
    trie = trie_of_items()
    cfg = GeneratorConfig(codebook_sizes=(3, 2), token_dim=8, n_visual_tokens=4, embed_dim=6, n_users=2, history_len=2, d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, dropout=0.0)
    torch.manual_seed(0)
    history = pd.DataFrame({"user_id": [1, 1], "slot": [0, 1], "item_id": [11, 99], "action": [ACTION_ORDER, ACTION_CLICK]})
    ckpt = Checkpoint(SIDGenerator(cfg).eval(), np.array([1, 2]), history, {})
    retriever = OneVisionRetriever(FakeEncoder(), ckpt, trie=trie, beam_width=4, batch_size=2, name="onevision_test")
    assert retriever.history[1, 0].tolist() == [0, 1] and retriever.history[1, 1].tolist() == [-1, -1]  # item 99 unknown: padded
    images = np.random.default_rng(0).integers(0, 255, size=(5, 8, 8), dtype=np.uint8)
    res = retriever.retrieve(images, np.array([1, 2, 777, -1, 1]), k=4)
    assert res.item_ids.shape == (5, 4) and (res.item_ids >= 0).all()
    assert all(len(set(row)) == 4 for row in res.item_ids.tolist())
    assert set(res.timings) == {"encode", "generate"}
    # unknown and anonymous users get the same (anonymous) context, hence the same answer
    same = retriever.retrieve(np.stack([images[0], images[0]]), np.array([777, -1]), k=4)
    np.testing.assert_array_equal(same.item_ids[0], same.item_ids[1])
    ctx = retriever.context(images[:2], np.array([777, -1]))
    assert ctx.user.tolist() == [0, 0] and (ctx.action == ACTION_PAD).all()
