"""Geometry-aware decoding (onevision.generative.geosearch): residual beam search as the prior, never an invalid SID."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from onevision.generative.checkpoint import build_generator, load_checkpoint, save_checkpoint
from onevision.generative.decode import beam_search
from onevision.generative.geosearch import candidate_prefix_scores, geometric_beam_search
from onevision.generative.model import Context, GeneratorConfig
from onevision.generative.trie import SIDTrie
from onevision.vrq.quantizer import disambiguate

D, V0, V1 = 6, 5, 4


def tiny_catalog(seed: int = 0, n_items: int = 60):
    """Random codebooks; each item's SID = its greedy residual codes + disambiguation, as the VRQ stage writes them."""
    rng = np.random.default_rng(seed)
    books = [rng.normal(size=(V0, D)).astype(np.float32), 0.5 * rng.normal(size=(V1, D)).astype(np.float32)]
    emb = rng.normal(size=(n_items, D)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    codes, r = [], emb.copy()
    for book in books:
        c = ((r[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
        codes.append(c)
        r = r - book[c]
    codes = np.stack(codes, 1)
    items = np.arange(100, 100 + n_items)
    sids = np.concatenate([codes, disambiguate(codes, items)[:, None]], axis=1)
    trie = SIDTrie(sids, items, (V0, V1, int(sids[:, 2].max()) + 1))
    return books, emb, items, trie


def geo_model(trie: SIDTrie, books, *, leaf_items: int = 0, n_users: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    cfg = GeneratorConfig(codebook_sizes=trie.codebook_sizes, token_dim=4, n_visual_tokens=4, embed_dim=D, n_users=n_users, history_len=2,
                          d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, dropout=0.0, geo_levels=2, geo_dim=D,
                          leaf_items=leaf_items, leaf_categories=3, leaf_brands=2)
    model = build_generator(cfg).eval()
    model.set_codebooks(books)
    return model


def contexts(rng, queries: np.ndarray, n_users: int = 0) -> Context:
    B = len(queries)
    users = torch.from_numpy(rng.integers(0, n_users + 1, size=B)) if n_users else torch.zeros(B, dtype=torch.long)
    return Context(visual=torch.from_numpy(rng.normal(size=(B, 4, 4)).astype(np.float32)), image=torch.from_numpy(queries),
                   user=users, history=torch.full((B, 2, 3), -1), action=torch.zeros(B, 2, dtype=torch.long))


def reference_residual_search(query: np.ndarray, books, scales, trie: SIDTrie, width: int) -> list[list[tuple[float, tuple[int, int]]]]:
    """Plain-Python residual beam search over the trie: per level, log-softmax of scale * (2 r.c - |c|^2) over the
    codes that continue a catalog SID (the trie's valid children)."""
    sids = trie.sids.numpy()
    allowed0 = set(sids[:, 0].tolist())
    out = []
    for q in query:
        beams = [(0.0, (), q.astype(np.float64))]
        for level, book in enumerate(books):
            cand = []
            for score, prefix, r in beams:
                logits = scales[level] * (2 * book @ r - (book * book).sum(1))
                ok = allowed0 if level == 0 else {int(s[1]) for s in sids if s[0] == prefix[0]}
                top = max(logits[c] for c in ok)
                logp = logits - top - np.log(sum(np.exp(logits[c] - top) for c in ok))
                cand += [(score + logp[c], (*prefix, c), r - book[c]) for c in ok]
            beams = sorted(cand, key=lambda t: -t[0])[:width]
        out.append([(s, p) for s, p, _ in beams])
    return out


def test_untrained_geometric_generator_is_residual_beam_search():
    books, emb, items, trie = tiny_catalog()
    model = geo_model(trie, books)
    rng = np.random.default_rng(1)
    queries = emb[rng.integers(len(emb), size=7)] + 0.2 * rng.normal(size=(7, D)).astype(np.float32)
    ctx = contexts(rng, queries)
    width = 6
    res = geometric_beam_search(model, ctx, trie=trie, beam_width=width, k=width, max_leaves=16)  # learned term on (weight 1) but untrained: 0
    ref = reference_residual_search(queries, books, model.geo_log_scale.exp().detach().numpy(), trie, width)
    sids = trie.sids.numpy()
    for b, beams in enumerate(ref):
        # every item under the reference's kept prefixes, in beam order, with the prefix's score
        expected = [(s, tuple(int(c) for c in row)) for s, p in beams for row in sids if tuple(row[:2]) == p]
        got = [(float(s), tuple(row.tolist())) for s, row in zip(res.scores[b], res.sids[b], strict=True) if np.isfinite(float(s))]
        assert len(got) == min(width, len(expected))
        # items of one prefix tie: compare as sets of (prefix score, SID), the scores to float precision
        key = lambda t: (round(-t[0], 3), t[1])  # noqa: E731
        exp = sorted(expected, key=key)[: len(got)]
        assert {p for _, p in got} <= {p for _, p in expected}
        np.testing.assert_allclose(sorted(s for s, _ in got), sorted(s for s, _ in exp), rtol=1e-4, atol=1e-4)
    # the plain entry point routes geometric models here
    via = beam_search(model, ctx, trie=trie, beam_width=width, k=width)
    torch.testing.assert_close(via.item_ids, geometric_beam_search(model, ctx, trie=trie, beam_width=width, k=width).item_ids)


def test_learned_weight_zero_skips_the_decoder_and_matches_geometry():
    books, emb, items, trie = tiny_catalog()
    model = geo_model(trie, books)
    torch.nn.init.normal_(model.heads[0].weight, std=1.0)  # a "trained" learned term
    rng = np.random.default_rng(2)
    ctx = contexts(rng, emb[:5])
    plain = geometric_beam_search(model, ctx, trie=trie, beam_width=4, k=4, learned_weight=0.0)
    model.heads[0].weight.data.zero_()
    torch.testing.assert_close(plain.scores, geometric_beam_search(model, ctx, trie=trie, beam_width=4, k=4).scores)


def test_prefix_scores_equal_the_beam_scores():
    books, emb, items, trie = tiny_catalog()
    model = geo_model(trie, books)
    torch.nn.init.normal_(model.heads[1].weight, std=0.5)
    rng = np.random.default_rng(3)
    ctx = contexts(rng, emb[:4])
    res = geometric_beam_search(model, ctx, trie=trie, beam_width=5, k=5, use_leaf=False)
    scores = candidate_prefix_scores(model, ctx, sids=res.sids)
    torch.testing.assert_close(scores, res.scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_no_invalid_sid_under_any_config(seed):
    rng = np.random.default_rng(seed)
    books, emb, items, trie = tiny_catalog(seed, n_items=int(rng.integers(8, 80)))
    n_users = 3
    model = geo_model(trie, books, leaf_items=len(items), n_users=n_users, seed=seed)
    table = pd.DataFrame({"item_id": items, "category": rng.integers(0, 3, len(items)), "brand": rng.choice(["a", "b"], len(items)),
                          "price": rng.uniform(1, 10, len(items))})
    model.leaf.fill(table, items, emb)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    ctx = contexts(rng, rng.normal(size=(9, D)).astype(np.float32), n_users)
    for _ in range(4):
        k = int(rng.integers(1, 30))
        res = geometric_beam_search(model, ctx, trie=trie, beam_width=int(rng.integers(1, 12)), k=k, max_leaves=int(rng.integers(1, 5)),
                                    learned_weight=float(rng.choice([0.0, 0.5, 1.0])), level_widths=(int(rng.integers(1, 6)),))
        assert res.item_ids.shape == (9, k) and res.invalid_rate == 0.0
        found = res.item_ids[res.item_ids >= 0]
        assert torch.isin(found, trie.leaf_item).all()
        assert all(len(set(r[r >= 0].tolist())) == int((r >= 0).sum()) for r in res.item_ids)  # distinct items
        ok = res.item_ids >= 0
        assert (trie.lookup(res.sids[ok]) == res.item_ids[ok]).all()  # SIDs name their items


def test_unconstrained_geometric_search_reports_the_prefixes_the_trie_would_have_masked():
    """The baseline of the trie's overhead: without the mask, prefixes outside the catalog survive and expand to no
    item; their share is ``invalid_rate``. Every item it does return is still a catalog item, with its own SID."""
    rng = np.random.default_rng(3)
    books, emb, items, trie = tiny_catalog(3, n_items=6)  # 6 items: most of the 5 x 4 level-1 prefixes are empty
    model = geo_model(trie, books)
    ctx = contexts(rng, rng.normal(size=(16, D)).astype(np.float32))
    free = beam_search(model, ctx, trie=trie, beam_width=12, k=5, constrained=False)
    assert 0.0 < free.invalid_rate < 1.0 and free.dead_prefixes == free.invalid_rate
    ok = free.item_ids >= 0
    assert torch.isin(free.item_ids[ok], trie.leaf_item).all() and (trie.lookup(free.sids[ok]) == free.item_ids[ok]).all()
    masked = beam_search(model, ctx, trie=trie, beam_width=12, k=5)
    assert masked.invalid_rate == 0.0 and masked.dead_prefixes is None
    assert int((masked.item_ids >= 0).sum()) >= int(ok.sum())  # the mask spends the whole beam on real prefixes


def test_checkpoint_round_trip_keeps_codebooks_leaf_and_learned_weight(tmp_path):
    books, emb, items, trie = tiny_catalog()
    model = geo_model(trie, books, leaf_items=len(items), n_users=2)
    table = pd.DataFrame({"item_id": items, "category": np.arange(len(items)) % 3, "brand": ["a", "b"] * (len(items) // 2), "price": 2.0})
    model.leaf.fill(table, items, emb)
    model.learned_weight.fill_(0.5)
    save_checkpoint(tmp_path, model, np.array([7, 9]))
    back = load_checkpoint(tmp_path).model
    rng = np.random.default_rng(0)
    ctx = contexts(rng, emb[:3], 2)
    a = geometric_beam_search(model, ctx, trie=trie, beam_width=5, k=5)
    b = geometric_beam_search(back, ctx, trie=trie, beam_width=5, k=5)
    torch.testing.assert_close(a.scores, b.scores)
    assert float(back.learned_weight) == 0.5


def shop_with_a_brand_lover(seed: int = 0):
    """The tiny catalog with brands, a leaf store and user 1 whose logged events are all of brand 'a'."""
    rng = np.random.default_rng(seed)
    books, emb, items, trie = tiny_catalog(seed, n_items=60)
    model = geo_model(trie, books, leaf_items=len(items), n_users=2)
    brand = np.where(rng.uniform(size=len(items)) < 0.3, "a", "b")
    table = pd.DataFrame({"item_id": items, "category": rng.integers(0, 3, len(items)), "brand": brand, "price": 2.0})
    model.leaf.fill(table, items, emb)
    loved = items[brand == "a"][:8]
    model.leaf.fill_users(np.ones(len(loved), np.int64), loved, np.full(len(loved), 2))
    return model, trie, emb, items, brand


def test_the_shopper_term_keeps_the_brand_lovers_prefixes_and_leaves_anonymous_beams_alone():
    model, trie, emb, items, brand = shop_with_a_brand_lover(1)
    model.geo_log_scale.data.fill_(0.0)  # geometry as unsure as a shopper's photo between neighbouring prefixes
    rng = np.random.default_rng(1)
    queries = emb[rng.choice(len(items), 24, replace=False)]
    anon, lover = contexts(rng, queries), contexts(rng, queries)
    lover.user = torch.ones(len(queries), dtype=torch.long)
    search = dict(trie=trie, beam_width=2, k=16, use_leaf=False)
    plain = geometric_beam_search(model, lover, **search, shopper_weight=0.0)
    personal = geometric_beam_search(model, lover, **search, shopper_weight=2.0)
    for weight in (0.0, 2.0):  # an anonymous query has no lift: the term is 0 whatever its weight
        torch.testing.assert_close(geometric_beam_search(model, anon, **search, shopper_weight=weight).scores, plain.scores)
    assert not torch.equal(personal.item_ids, plain.item_ids)  # the same photos, another shopper: another beam
    share = lambda res: float(np.isin(res.item_ids[res.item_ids >= 0].numpy(), items[brand == "a"]).mean())  # noqa: E731
    assert share(personal) > share(plain) + 0.08
    assert personal.invalid_rate == 0.0


def test_prefix_scores_equal_the_beam_scores_with_the_shopper_term():
    model, trie, emb, items, brand = shop_with_a_brand_lover(2)
    model.shopper_weight.fill_(1.5)
    rng = np.random.default_rng(4)
    ctx = contexts(rng, emb[:6], n_users=2)
    res = geometric_beam_search(model, ctx, trie=trie, beam_width=5, k=5, use_leaf=False)
    torch.testing.assert_close(candidate_prefix_scores(model, ctx, sids=res.sids, trie=trie), res.scores, rtol=1e-4, atol=1e-4)
    # what the leaf head reads: the same prefixes scored without the shopper term
    plain = candidate_prefix_scores(model, ctx, sids=res.sids, trie=trie, shopper=False)
    torch.testing.assert_close(plain, res.prefix_scores, rtol=1e-4, atol=1e-4)
    model.shopper_weight.fill_(0.0)
    torch.testing.assert_close(plain, candidate_prefix_scores(model, ctx, sids=res.sids, trie=trie), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, res.scores)


def test_a_checkpoint_of_format_2_loads_with_no_shopper_term(tmp_path):
    model, trie, emb, items, brand = shop_with_a_brand_lover()
    model.shopper_weight.fill_(1.0)
    save_checkpoint(tmp_path, model, np.array([7, 9]))
    assert float(load_checkpoint(tmp_path).model.shopper_weight) == 1.0
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    del state["shopper_weight"]
    torch.save(state, tmp_path / "weights.pt")
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "format": 2}))
    assert float(load_checkpoint(tmp_path).model.shopper_weight) == 0.0


def test_score_margin_pruning_keeps_k_items_and_only_narrows_the_beam():
    """beam_margin: a query keeps the beams within the margin of its best and never fewer than it takes for k items;
    an infinite margin changes nothing, a zero margin still returns k distinct catalog items, ranked, none scored above
    the full beam's best."""
    from onevision.generative.geosearch import margin_keep

    beam = torch.tensor([[0.0, -0.5, -2.0, -9.0], [0.0, -9.0, -9.5, float("-inf")]])
    items = torch.tensor([[1, 1, 1, 1], [3, 1, 1, 0]])
    assert margin_keep(beam, items, 1.0, 1).tolist() == [2, 1]
    assert margin_keep(beam, items, 1.0, 4).tolist() == [4, 2]  # k items: row 1 needs 2 beams (3 + 1), row 0 all four
    assert margin_keep(beam, items, 0.0, 100).tolist() == [4, 3]  # all the beam holds (the dead beam adds nothing)
    rng = np.random.default_rng(3)
    books, emb, items_, trie = tiny_catalog(3, n_items=70)
    model = geo_model(trie, books)
    ctx = contexts(rng, emb[:6] + 0.3 * rng.normal(size=(6, D)).astype(np.float32))
    full = geometric_beam_search(model, ctx, trie=trie, beam_width=8, k=5, use_leaf=False)
    same = geometric_beam_search(model, ctx, trie=trie, beam_width=8, k=5, use_leaf=False, beam_margin=math.inf)
    assert torch.equal(full.item_ids, same.item_ids)
    tight = geometric_beam_search(model, ctx, trie=trie, beam_width=8, k=5, use_leaf=False, beam_margin=0.0)
    assert (tight.item_ids >= 0).all() and tight.invalid_rate == 0.0
    assert all(len(set(r.tolist())) == 5 for r in tight.item_ids)
    assert (tight.scores[:, 0] <= full.scores[:, 0] + 1e-5).all()  # a narrower beam never finds a better prefix
    assert (tight.scores[:, :-1] >= tight.scores[:, 1:]).all()
    wide = geometric_beam_search(model, ctx, trie=trie, beam_width=8, k=5, use_leaf=False, beam_margin=1e9)
    assert torch.equal(wide.item_ids, full.item_ids)  # a margin no beam trails by keeps the whole beam
