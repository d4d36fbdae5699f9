"""Behaviour: a shopper who loves a brand sees more of it after SFT and DPO than after pretraining.

A tiny synthetic shop (no encoder, no files): 6 visual clusters x 24 items,
SID = (cluster, slot // 4, slot % 4), brands spread at random inside each
cluster so a brand is *not* a SID prefix: the model must learn it from the
user's clicks and orders. User 1 loves brand 0 (clicks and orders it when
shown); the other users click the photographed item and little else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from onevision.generative.data import (
    anonymous_examples,
    context_rows,
    histories_before,
    interaction_events,
    personalised_examples,
    preference_pairs,
    target_examples,
)
from onevision.generative.decode import beam_search
from onevision.generative.model import GeneratorConfig, SIDGenerator
from onevision.generative.train import ImageBank, SIDExamples, train_dpo, train_sid_model
from onevision.generative.trie import SIDTrie

N_CLUSTERS, PER_CLUSTER, N_BRANDS, T, D, E = 6, 24, 4, 4, 8, 8
LOVER, LOVED_BRAND = 1, 0


class Shop:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        n = N_CLUSTERS * PER_CLUSTER
        self.items = np.arange(n)
        self.cluster = self.items // PER_CLUSTER
        slot = self.items % PER_CLUSTER
        self.sids = np.stack([self.cluster, slot // 4, slot % 4], axis=1)
        self.brand = np.concatenate([self.rng.permutation(np.arange(PER_CLUSTER) % N_BRANDS) for _ in range(N_CLUSTERS)])
        self.proto = self.rng.normal(size=(N_CLUSTERS, T, D)).astype(np.float32)
        self.signature = self.rng.normal(size=(n, T, D)).astype(np.float32)
        self.proto_emb = self.rng.normal(size=(N_CLUSTERS, E)).astype(np.float32)
        self.sig_emb = self.rng.normal(size=(n, E)).astype(np.float32)
        self.trie = SIDTrie(self.sids, self.items, (N_CLUSTERS, 6, 4))

    def photos(self, items: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
        visual = self.proto[self.cluster[items]] + 0.6 * self.signature[items] + noise * self.rng.normal(size=(len(items), T, D))
        emb = self.proto_emb[self.cluster[items]] + 0.6 * self.sig_emb[items] + noise * self.rng.normal(size=(len(items), E))
        return visual.astype(np.float32), (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

    def log(self, n_users: int, per_user: int):
        """Queries, impressions (12 items of the target's cluster) and clicks/orders."""
        q_rows, imp_rows, act_rows = [], [], []
        qid = 0
        for t in range(per_user):
            for user in range(1, n_users + 1):
                target = int(self.rng.integers(len(self.items)))
                others = self.rng.permutation(np.flatnonzero((self.cluster == self.cluster[target]) & (self.items != target)))[:11]
                shown = self.rng.permutation(np.append(others, target))
                q_rows.append((qid, user, target, pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=t * 10 + user)))
                for pos, item in enumerate(shown):
                    imp_rows.append((qid, pos, int(item)))
                    loves = user == LOVER and self.brand[item] == LOVED_BRAND
                    p_click = 0.8 if item == target else (0.7 if loves else 0.03)
                    if self.rng.uniform() < p_click:
                        act_rows.append((qid, int(item), "click"))
                        if self.rng.uniform() < (0.6 if loves else 0.2):
                            act_rows.append((qid, int(item), "order"))
                qid += 1
        queries = pd.DataFrame(q_rows, columns=["query_id", "user_id", "item_id", "ts"])
        impressions = pd.DataFrame(imp_rows, columns=["query_id", "position", "item_id"])
        interactions = pd.DataFrame(act_rows, columns=["query_id", "item_id", "action"])
        return queries, impressions, interactions


@dataclass
class Logs:
    queries: pd.DataFrame
    impressions: pd.DataFrame
    events: pd.DataFrame


def logged_shop(H: int, seed: int = 0):
    """The shop, its logs, an image bank (catalog photos clean, logged query photos and 96 fresh test photos for
    the brand lover noisy) and the contexts of the logged queries and of the test photos (the lover's history)."""
    shop = Shop(seed=seed)
    queries, impressions, interactions = shop.log(n_users=4, per_user=60)
    events = interaction_events(interactions, queries)
    catalog_visual, catalog_emb = shop.photos(shop.items, noise=0.1)
    query_visual, query_emb = shop.photos(queries["item_id"].to_numpy(), noise=0.5)
    test_items = shop.rng.integers(len(shop.items), size=96)
    test_visual, test_emb = shop.photos(test_items, noise=0.5)
    bank = ImageBank(torch.from_numpy(np.concatenate([catalog_visual, query_visual, test_visual])), torch.from_numpy(np.concatenate([catalog_emb, query_emb, test_emb])))
    n_cat, n_q = len(shop.items), len(queries)
    ts = queries["ts"].astype("int64").to_numpy()
    hist_items, hist_actions = histories_before(events, queries["user_id"].to_numpy(), ts, H)
    query_rows = context_rows(n_cat + np.arange(n_q), queries["user_id"].to_numpy(), hist_items, hist_actions, shop.trie)
    later = np.full(len(test_items), ts.max() + 1)
    t_items, t_actions = histories_before(events, np.full(len(test_items), LOVER), later, H)
    test_rows = context_rows(n_cat + n_q + np.arange(len(test_items)), np.full(len(test_items), LOVER), t_items, t_actions, shop.trie)
    return shop, Logs(queries, impressions, events), bank, query_rows, test_rows, test_items


def brand_share_and_hits(model, shop: Shop, bank: ImageBank, rows, targets) -> tuple[float, float]:
    res = beam_search(model, rows.context(bank), trie=shop.trie, beam_width=10, k=10)
    ids = res.item_ids.numpy()
    assert (ids >= 0).all()
    share = float((shop.brand[ids] == LOVED_BRAND).mean())
    hits = float((ids == targets[:, None]).any(axis=1).mean())
    return share, hits


@pytest.mark.slow
def test_loved_brand_share_rises_from_pretrain_to_sft_and_dpo():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shop, logged, bank, query_rows, test_rows, test_items = logged_shop(H=4)
    queries, impressions, events = logged.queries, logged.impressions, logged.events
    n_cat, n_q, H = len(shop.items), len(queries), 4

    cfg = GeneratorConfig(codebook_sizes=shop.trie.codebook_sizes, token_dim=D, n_visual_tokens=T, embed_dim=E, n_users=4, history_len=H, d_model=48, n_heads=4, n_enc_layers=1, n_dec_layers=1, dropout=0.0)
    model = SIDGenerator(cfg)

    # pretrain: visual prior only (anonymous)
    pre = SIDExamples.concat([
        anonymous_examples(np.arange(n_cat), shop.items, shop.trie, H),
        anonymous_examples(n_cat + np.arange(n_q), queries["item_id"].to_numpy(), shop.trie, H),
    ])
    train_sid_model(model, bank, examples=pre, epochs=25, batch_size=64, lr=3e-3, seed=0)
    share_pre, hits_pre = brand_share_and_hits(model, shop, bank, test_rows, test_items)

    # sft: clicks and orders with user context, plus replay of the photographed item
    qids = queries["query_id"].to_numpy()
    sft_ex = personalised_examples(query_rows, qids, events=events, trie=shop.trie, click_weight=1.0, order_weight=3.0)
    replay = target_examples(query_rows, queries["item_id"].to_numpy(), shop.trie, weight=0.5)
    train_sid_model(model, bank, examples=SIDExamples.concat([sft_ex, replay]), epochs=25, batch_size=64, lr=2e-3, anonymize_prob=0.1, seed=1)
    share_sft, hits_sft = brand_share_and_hits(model, shop, bank, test_rows, test_items)

    # dpo against the frozen SFT model
    reference = SIDGenerator(cfg)
    reference.load_state_dict(model.state_dict())
    pairs = preference_pairs(query_rows, qids, impressions=impressions, events=events, trie=shop.trie, pair_types=["order>click", "order>skip", "click>skip"], skip_positions=12, max_pairs_per_query=6, seed=0)
    train_dpo(model, reference, bank=bank, pairs=pairs, beta=0.5, epochs=4, batch_size=64, lr=3e-4, sft_weight=0.2, seed=2)
    share_dpo, hits_dpo = brand_share_and_hits(model, shop, bank, test_rows, test_items)

    print(f"loved-brand share@10: pretrain {share_pre:.3f}  sft {share_sft:.3f}  dpo {share_dpo:.3f}; HR@10 {hits_pre:.2f} {hits_sft:.2f} {hits_dpo:.2f}")
    assert share_pre < 0.4  # ~ 1/4 of a cluster's items: the visual prior ignores brands
    # seeds 0-2 measured: pretrain 0.20-0.25, SFT 0.36-0.40, DPO 0.35-0.41
    assert share_sft > share_pre + 0.08
    assert share_dpo > share_pre + 0.08 and share_dpo >= share_sft - 0.03
    # personalisation must not cost the photographed product its place
    assert hits_sft >= 0.8 * hits_pre and hits_dpo >= 0.8 * hits_pre
