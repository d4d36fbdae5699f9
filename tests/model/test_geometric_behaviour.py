"""Behaviour of the geometric OneVision model (residual beam search + leaf head) on a tiny synthetic shop.

The shop of test_generative_behaviour (6 visual clusters x 24 items, brands spread inside clusters, user 1
loves brand 0). Level 0 and 1 of the SID are residual codes of the catalog embeddings; the last level is
the disambiguation the leaf head resolves. Checked: the brand lover sees more of the brand after SFT and
DPO than after pretraining, the photographed product keeps its place, and a cropped / re-lit photo
(a perturbed embedding) keeps its top item.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from onevision.generative.checkpoint import build_generator
from onevision.generative.geosearch import geometric_beam_search
from onevision.generative.leaf_train import build_leaf_examples, fit_leaf, fit_leaf_dpo, set_feature_scale
from onevision.generative.model import GeneratorConfig
from onevision.generative.train import ContextRows, ImageBank
from tests.model.test_generative_behaviour import (
    LOVED_BRAND,
    N_CLUSTERS,
    PER_CLUSTER,
    D,
    E,
    Shop,
    T,
    logged_shop,
)


def residual_codebooks(shop: Shop, emb: np.ndarray) -> list[np.ndarray]:
    level0 = np.stack([emb[shop.cluster == c].mean(0) for c in range(N_CLUSTERS)])
    resid = emb - level0[shop.cluster]
    level1 = np.stack([resid[shop.sids[:, 1] == j].mean(0) for j in range(PER_CLUSTER // 4)])
    return [level0.astype(np.float32), level1.astype(np.float32)]


def top10(model, shop: Shop, bank: ImageBank, rows: ContextRows) -> np.ndarray:
    # the shop's level-1 codes are not residual codes of the photos (brands and slots are random within a
    # cluster), so the beam keeps every prefix (6 x 6): what is tested here is the leaf head
    res = geometric_beam_search(model, rows.context(bank), trie=shop.trie, beam_width=36, k=10)
    assert res.invalid_rate == 0.0
    return res.item_ids.numpy()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    H = 4
    shop, logged, bank, query_rows, test_rows, test_items = logged_shop(H)
    queries, impressions, events = logged.queries, logged.impressions, logged.events
    catalog_emb = bank.image[: len(shop.items)].numpy()  # the bank starts with the catalog photos
    anon_test = ContextRows.anonymous(test_rows.image_idx, H, shop.trie.n_levels)

    cfg = GeneratorConfig(codebook_sizes=shop.trie.codebook_sizes, token_dim=D, n_visual_tokens=T, embed_dim=E, n_users=4, history_len=H,
                          d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, dropout=0.0, geo_levels=2, geo_dim=E,
                          leaf_items=len(shop.items), leaf_categories=N_CLUSTERS, leaf_brands=4)
    model = build_generator(cfg).eval()
    model.set_codebooks(residual_codebooks(shop, catalog_emb))
    model.learned_weight.fill_(0.0)
    table = pd.DataFrame({"item_id": shop.items, "category": shop.cluster, "brand": [f"b{b}" for b in shop.brand], "price": 10.0})
    model.leaf.fill(table, shop.items, catalog_emb, impressions, events)
    kw = dict(impressions=impressions, beam_width=36, exact_weight=2.0, click_weight=1.0, order_weight=3.0, skip_positions=12)

    # pretrain: the photographed item among the beam's items, anonymous
    lists = build_leaf_examples(model, bank, rows=query_rows, frame=queries, trie=shop.trie, **{**kw, "impressions": None}, events=None, anonymous=True)
    set_feature_scale(model.leaf, lists)
    fit_leaf(model.leaf, lists, epochs=30, lr=1e-2, seed=0)
    pretrain = copy.deepcopy(model)

    # sft: the user representation + position-debiased listwise loss over the logged impressions
    model.leaf.fill_users(queries.set_index("query_id").loc[events["query_id"], "user_id"].to_numpy(), events["item_id"].to_numpy(), events["action"].to_numpy())
    lists = build_leaf_examples(model, bank, rows=query_rows, frame=queries, trie=shop.trie, events=events, exclude_own=True, **kw)
    set_feature_scale(model.leaf, lists)
    fit_leaf(model.leaf, lists, epochs=30, lr=1e-2, seed=1)
    sft = copy.deepcopy(model)

    # dpo against the frozen SFT head
    fit_leaf_dpo(model.leaf, sft.leaf, train=lists, beta=1.0, epochs=4, lr=1e-3, sft_weight=0.2, seed=2)
    return shop, bank, test_rows, anon_test, test_items, pretrain, sft, model


@pytest.mark.slow
def test_brand_lover_sees_more_of_the_brand_after_sft_and_dpo(trained):
    shop, bank, test_rows, anon_test, test_items, pretrain, sft, dpo = trained
    share = lambda ids: float((shop.brand[ids] == LOVED_BRAND).mean())  # noqa: E731
    hits = lambda ids: float((ids == test_items[:, None]).any(1).mean())  # noqa: E731
    pre_ids = top10(pretrain, shop, bank, anon_test)  # the pretrain model knows no users: served anonymously
    sft_ids, dpo_ids = top10(sft, shop, bank, test_rows), top10(dpo, shop, bank, test_rows)
    print(f"loved-brand share@10: pretrain {share(pre_ids):.3f} sft {share(sft_ids):.3f} dpo {share(dpo_ids):.3f}; "
          f"HR@10 {hits(pre_ids):.2f} {hits(sft_ids):.2f} {hits(dpo_ids):.2f}")
    assert share(pre_ids) < 0.4
    assert share(sft_ids) > share(pre_ids) + 0.08
    assert share(dpo_ids) > share(pre_ids) + 0.08 and share(dpo_ids) >= share(sft_ids) - 0.03
    assert hits(sft_ids) >= 0.9 * hits(pre_ids) and hits(dpo_ids) >= 0.9 * hits(pre_ids)


@pytest.mark.slow
def test_a_cropped_or_relit_photo_keeps_its_top_item(trained):
    shop, bank, test_rows, anon_test, test_items, pretrain, sft, dpo = trained
    rng = np.random.default_rng(5)
    items = shop.items[::3]
    visual, emb = shop.photos(items, noise=0.05)
    clean = ImageBank(torch.from_numpy(visual), torch.from_numpy(emb))
    # a crop / lighting change moves the aligned embedding a little: the same top item must come back
    moved = emb + 0.04 * rng.normal(size=emb.shape).astype(np.float32)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    perturbed = ImageBank(torch.from_numpy(visual), torch.from_numpy(moved.astype(np.float32)))
    rows = ContextRows.anonymous(torch.arange(len(items)), 4, shop.trie.n_levels)
    for model in (pretrain, dpo):
        a = top10(model, shop, clean, rows)[:, 0]
        b = top10(model, shop, perturbed, rows)[:, 0]
        assert (a == items).mean() >= 0.9
        assert (a == b).mean() >= 0.9


@pytest.mark.slow
def test_brand_lovers_beam_holds_more_of_the_brand_than_the_same_photos_anonymous_beam(trained):
    """The shopper term of the beam (geosearch.shopper_scores): with the user store SFT filled, a narrow beam (4 of
    the 36 prefixes) keeps the prefixes that hold more of the lover's brand; the photographed cluster stays first."""
    shop, bank, test_rows, anon_test, test_items, pretrain, sft, dpo = trained
    model = copy.deepcopy(sft)
    model.shopper_weight.fill_(1.0)

    def beam(rows: ContextRows) -> np.ndarray:
        res = geometric_beam_search(model, rows.context(bank), trie=shop.trie, beam_width=4, k=16, use_leaf=False)
        assert res.invalid_rate == 0.0
        return res.item_ids.numpy()

    share = lambda ids: float((shop.brand[ids[ids >= 0]] == LOVED_BRAND).mean())  # noqa: E731
    personal, anonymous = beam(test_rows), beam(anon_test)
    print(f"loved-brand share of a 4-prefix beam: personalised {share(personal):.3f}, anonymous {share(anonymous):.3f}")
    assert not np.array_equal(personal, anonymous)
    assert share(personal) > share(anonymous) + 0.05
    assert (shop.cluster[personal[:, 0]] == shop.cluster[test_items]).mean() >= 0.8
