"""Behaviour of the tied decoder (the generator in OneVision's shipped path) on the tiny synthetic shop.

The shop of test_generative_behaviour: 6 visual clusters x 24 items, SID = (cluster, slot // 4, slot % 4), brands
spread at random inside each cluster, user 1 loves brand 0. The decoder decodes the two geometric levels (the
tokenizer's residual codes); the last level is expanded by the trie. Checked without the leaf head, so that what
is measured is the generator itself: after SFT the brand lover's *beam* holds more of the brand than the same
photos' anonymous beam, pretraining alone learns to retrieve the photographed cluster, and nothing it generates is
missing from the catalog.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from onevision.generative.checkpoint import build_generator
from onevision.generative.data import anonymous_examples, personalised_examples, target_examples
from onevision.generative.geosearch import geometric_beam_search
from onevision.generative.model import GeneratorConfig
from onevision.generative.train import ContextRows, ImageBank, SIDExamples, train_sid_model
from tests.model.test_generative_behaviour import LOVED_BRAND, D, E, Shop, T, logged_shop
from tests.model.test_geometric_behaviour import residual_codebooks

H = 4


def beam_items(model, shop: Shop, bank: ImageBank, rows: ContextRows, width: int = 2) -> np.ndarray:
    """The items under the decoder's ``width`` best prefixes (4 each), no leaf head: what the generator proposes."""
    res = geometric_beam_search(model, rows.context(bank), trie=shop.trie, beam_width=width, k=4 * width, max_leaves=4, use_leaf=False)
    assert res.invalid_rate == 0.0
    ids = res.item_ids.numpy()
    assert (ids >= 0).all() and set(ids.ravel().tolist()) <= set(shop.items.tolist())
    return ids


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    shop, logged, bank, query_rows, test_rows, test_items = logged_shop(H)
    catalog_emb = bank.image[: len(shop.items)].numpy()
    cfg = GeneratorConfig(codebook_sizes=shop.trie.codebook_sizes, token_dim=D, n_visual_tokens=T, embed_dim=E, n_users=4, history_len=H,
                          d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, dropout=0.0, geo_levels=2, geo_dim=E, tied_head=True)
    model = build_generator(cfg)
    model.set_codebooks(residual_codebooks(shop, catalog_emb))
    model.learned_weight.fill_(1.0)  # the decoder alone
    queries = logged.queries
    # pretrain, anonymous: catalog photos and logged query photos -> their item's SID
    pre = SIDExamples.concat([anonymous_examples(np.arange(len(shop.items)), shop.items, shop.trie, H),
                              anonymous_examples(query_rows.image_idx.numpy(), queries["item_id"].to_numpy(), shop.trie, H)])
    train_sid_model(model, bank, examples=pre, epochs=15, batch_size=64, lr=3e-3, seed=0, trie=shop.trie)
    pretrain = copy.deepcopy(model).eval()
    # sft: (photo, user, history) -> what the shopper clicked and ordered, plus the photographed item
    sft_examples = SIDExamples.concat([
        personalised_examples(query_rows, queries["query_id"].to_numpy(), events=logged.events, trie=shop.trie, click_weight=1.0, order_weight=3.0),
        target_examples(query_rows, queries["item_id"].to_numpy(), shop.trie, 1.0),
    ])
    train_sid_model(model, bank, examples=sft_examples, epochs=25, batch_size=64, lr=3e-3, anonymize_prob=0.15, seed=1, trie=shop.trie)
    anon_test = ContextRows.anonymous(test_rows.image_idx, H, shop.trie.n_levels)
    return shop, bank, test_rows, anon_test, test_items, pretrain, model.eval()


@pytest.mark.slow
def test_pretrained_decoder_alone_retrieves_the_photographed_cluster(trained):
    shop, bank, test_rows, anon_test, test_items, pretrain, sft = trained
    ids = beam_items(pretrain, shop, bank, anon_test, width=1)
    assert (shop.cluster[ids[:, 0]] == shop.cluster[test_items]).mean() >= 0.9


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "open (the generator issue): the SFT'd tied decoder's beams differ between the lover and anonymous contexts, but "
    "the lover's holds less of the brand (measured 0.314 personalised vs 0.353 anonymous, 0.268 after pretraining): "
    "the brand is not a SID prefix here, so the decoder would have to learn user x cluster -> slot from 60 queries; "
    "the leaf head carries the brand, and the shipped beam gets it from the shopper's prefix term, which reads the "
    "leaf head's user store (test_geometric_behaviour); this tests the transformer decoder alone. strict: passing "
    "turns this red, to be unmarked"))
def test_brand_lovers_beam_holds_more_of_the_brand_than_an_anonymous_beam(trained):
    shop, bank, test_rows, anon_test, test_items, pretrain, sft = trained
    share = lambda ids: float((shop.brand[ids] == LOVED_BRAND).mean())  # noqa: E731
    personal, anonymous = beam_items(sft, shop, bank, test_rows), beam_items(sft, shop, bank, anon_test)
    print(f"loved-brand share of the beam: personalised {share(personal):.3f}, anonymous {share(anonymous):.3f}, "
          f"pretrain {share(beam_items(pretrain, shop, bank, anon_test)):.3f}")
    assert not np.array_equal(personal, anonymous)  # the same photos, another shopper: another beam
    assert share(personal) > share(anonymous) + 0.05
    # the photographed cluster is still what the beam holds
    assert (shop.cluster[personal[:, 0]] == shop.cluster[test_items]).mean() >= 0.8
