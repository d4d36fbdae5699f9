"""The tied decoder (GeneratorConfig.tied_head): a generator whose output layer is the tokenizer's codebooks.

What it must keep true: training and decoding normalise each level over the same codes (the trie's valid
children); the decoder alone is a search that exhaustive scoring agrees with; an untrained one is residual
search; it reads the shopper; it never names an item the catalog lacks.
"""

from __future__ import annotations

import numpy as np
import torch

from onevision.generative.checkpoint import build_generator, load_checkpoint, save_checkpoint
from onevision.generative.geosearch import candidate_prefix_scores, geometric_beam_search
from onevision.generative.model import GeneratorConfig, log_softmax_over
from onevision.generative.train import ContextRows, ImageBank, SIDExamples, mean_nll, train_sid_model
from tests.code.test_geosearch import D, contexts, tiny_catalog


def tied_model(trie, books, *, n_users: int = 0, seed: int = 0, perturb: float = 0.0):
    """A tied decoder on the tiny catalog; ``perturb`` > 0 gives its correction layers random weights (a decoder
    that disagrees with plain geometry, as a trained one does)."""
    torch.manual_seed(seed)
    cfg = GeneratorConfig(codebook_sizes=trie.codebook_sizes, token_dim=4, n_visual_tokens=4, embed_dim=D, n_users=n_users, history_len=2,
                          d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, dropout=0.0, geo_levels=2, geo_dim=D, tied_head=True)
    model = build_generator(cfg).eval()
    model.set_codebooks(books)
    if perturb:
        with torch.no_grad():
            for layer in (model.query_head, model.query_mix, *model.heads[:2]):
                layer.weight.normal_(0.0, perturb)
    return model


def _decoder_only_scores(model, ctx, trie) -> torch.Tensor:
    B, N, G = len(ctx), len(trie.sids), model.cfg.geo_levels
    flat = trie.sids.repeat(B, 1)  # (B*N, L)
    masks = trie.path_masks(flat, G)
    with torch.no_grad():
        memory, mask = model.encode(ctx)
        cross = [(k.repeat_interleave(N, 0), v.repeat_interleave(N, 0)) for k, v in model.cross_kv(memory)]
        h = model.decode(model.decoder_inputs(flat), cross, mask.repeat_interleave(N, 0))
        query = ctx.image.repeat_interleave(N, 0)
        resid, shift = model.residuals(query, flat), model.query_shift(query)
        total = torch.zeros(B * N)
        for level in range(G):
            logits = model.level_logits(h[:, level], level, resid=resid[:, level], geo_weight=0.0, shift=shift)
            total += log_softmax_over(logits, masks[level]).gather(1, flat[:, level : level + 1]).squeeze(1)
    return total.view(B, N)


def _queries(emb, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    q = emb[rng.integers(len(emb), size=n)] + 0.3 * rng.normal(size=(n, D)).astype(np.float32)
    return rng, q


def test_decoder_alone_beam_search_equals_exhaustive_scoring_under_the_trie_softmax():
    books, emb, items, trie = tiny_catalog()
    model = tied_model(trie, books, perturb=0.1)
    rng, q = _queries(emb, 6)
    ctx = contexts(rng, q)
    G = model.cfg.geo_levels
    n_prefixes = len({tuple(s[:G]) for s in trie.sids.tolist()})
    # a beam as wide as the number of prefixes is exhaustive: its prefix scores are the teacher-forced ones
    res = geometric_beam_search(model, ctx, trie=trie, beam_width=n_prefixes, k=len(items), max_leaves=len(items), geo_weight=0.0, use_leaf=False)
    exact = _decoder_only_scores(model, ctx, trie)  # (B, N)
    for b in range(len(q)):
        got = {int(i): float(s) for i, s in zip(res.item_ids[b], res.scores[b], strict=True) if i >= 0}
        assert len(got) == len(items)  # every catalog item, once
        want = {int(i): float(s) for i, s in zip(trie.leaf_item, exact[b], strict=True)}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-5, atol=1e-5)
    # a narrow beam keeps the best prefixes of the exhaustive ranking
    narrow = geometric_beam_search(model, ctx, trie=trie, beam_width=3, k=3, max_leaves=1, geo_weight=0.0, use_leaf=False)
    for b in range(len(q)):
        best = sorted({round(float(s), 4) for s in exact[b]}, reverse=True)[:3]
        assert [round(float(s), 4) for s in narrow.scores[b]] == best


def test_training_and_decoding_share_one_normalisation():
    """The loss training minimises for an item is minus the score constrained decoding gives it (one example, no
    weights): change either normalisation and this fails."""
    books, emb, items, trie = tiny_catalog()
    model = tied_model(trie, books, perturb=0.1)
    rng, q = _queries(emb, 5, seed=3)
    ctx = contexts(rng, q)
    targets = trie.sids[torch.from_numpy(rng.integers(len(items), size=5))]
    with torch.no_grad():
        losses = torch.stack([model(ctx.index(torch.tensor([i])), targets[i : i + 1], allowed=trie.path_masks(targets[i : i + 1], 2))[1]
                              for i in range(5)])
    decoded = candidate_prefix_scores(model, ctx, sids=targets.unsqueeze(1), learned_weight=1.0, trie=trie)[:, 0]
    torch.testing.assert_close(losses, -decoded, atol=1e-5, rtol=0)
    # and the beam reports the same score for the item when it keeps it
    res = geometric_beam_search(model, ctx, trie=trie, beam_width=64, k=len(items), max_leaves=len(items), use_leaf=False)
    for i in range(5):
        item = trie.lookup(targets[i : i + 1])[0]
        pos = (res.item_ids[i] == item).nonzero()
        assert len(pos) == 1
        assert abs(float(res.scores[i, pos[0, 0]]) + float(losses[i])) < 1e-4
    # the disambiguation level carries no loss (the trie expands it; decoding never scores it)
    assert model.trained_levels == 2


def test_untrained_tied_decoder_is_residual_search_and_weights_mix():
    books, emb, items, trie = tiny_catalog()
    model = tied_model(trie, books)  # correction layers start at 0
    with torch.no_grad():
        model.tied_log_scale.copy_(model.geo_log_scale)
    rng, q = _queries(emb, 6, seed=5)
    ctx = contexts(rng, q)
    geo = geometric_beam_search(model, ctx, trie=trie, beam_width=5, k=5, learned_weight=0.0, use_leaf=False)
    for kwargs in ({"geo_weight": 0.0}, {"learned_weight": 0.5}, {"learned_weight": 1.0}):
        res = geometric_beam_search(model, ctx, trie=trie, beam_width=5, k=5, use_leaf=False, **kwargs)
        torch.testing.assert_close(res.scores, geo.scores, atol=1e-5, rtol=0)


def test_the_decoder_reads_the_shopper_and_never_names_a_missing_item():
    books, emb, items, trie = tiny_catalog()
    model = tied_model(trie, books, n_users=4, perturb=0.1)
    with torch.no_grad():
        model.user_emb.weight.normal_(0.0, 2.0)
    rng, q = _queries(emb, 8, seed=7)
    ctx = contexts(rng, q)
    users = [geometric_beam_search(model, ctx.__class__(ctx.visual, ctx.image, torch.full((8,), u), ctx.history, ctx.action),
                                   trie=trie, beam_width=4, k=6, geo_weight=0.0, use_leaf=False) for u in range(5)]
    assert any(not torch.equal(users[0].item_ids, r.item_ids) for r in users[1:])  # beams differ between shoppers
    catalog = set(items.tolist())
    for w in (0.0, 0.25, 0.5, 1.0):
        for width in (1, 3, 7):
            res = geometric_beam_search(model, ctx, trie=trie, beam_width=width, k=5, learned_weight=w, use_leaf=False)
            got = res.item_ids[res.item_ids >= 0].tolist()
            assert set(got) <= catalog and res.invalid_rate == 0.0


def test_training_with_the_trie_softmax_lowers_the_loss_and_round_trips(tmp_path):
    books, emb, items, trie = tiny_catalog()
    model = tied_model(trie, books)
    rng = np.random.default_rng(11)
    n = 120
    pick = rng.integers(len(items), size=n)
    bank = ImageBank(torch.from_numpy(rng.normal(size=(n, 4, 4)).astype(np.float32)),
                     torch.from_numpy(emb[pick] + 0.4 * rng.normal(size=(n, D)).astype(np.float32)))
    examples = SIDExamples(ContextRows.anonymous(torch.arange(n), 2, 3), trie.sids[torch.from_numpy(pick)].clone(), torch.ones(n))
    before = mean_nll(model, bank, examples, trie=trie)
    train_sid_model(model, bank, examples=examples, epochs=6, batch_size=32, lr=1e-2, seed=0, trie=trie)
    after = mean_nll(model, bank, examples, trie=trie)
    assert after < before - 0.05
    model.learned_weight.fill_(0.75)
    save_checkpoint(tmp_path / "ck", model, np.zeros(0, np.int64), None)
    back = load_checkpoint(tmp_path / "ck").model
    assert back.tied and float(back.learned_weight) == 0.75
    ctx = ContextRows.anonymous(torch.arange(4), 2, 3).context(bank)
    torch.testing.assert_close(geometric_beam_search(back, ctx, trie=trie, beam_width=4, k=4, use_leaf=False).scores,
                               geometric_beam_search(model, ctx, trie=trie, beam_width=4, k=4, use_leaf=False).scores)


def test_leaf_lists_reuse_the_beams_prefix_scores():
    """The leaf head's training lists take the beam's own items' prefix scores from the search and score only the
    appended items (photographed item, impressions) by teacher forcing: both routes give the same numbers."""
    from onevision.generative.leaf_train import _list_prefix_scores

    books, emb, items, trie = tiny_catalog()
    model = tied_model(trie, books, perturb=0.1)
    model.learned_weight.fill_(0.5)
    rng, q = _queries(emb, 4, seed=9)
    ctx = contexts(rng, q)
    beam = geometric_beam_search(model, ctx, trie=trie, beam_width=3, k=3, use_leaf=False)
    extra = torch.from_numpy(rng.choice(items, size=(4, 2), replace=False))
    rows = []
    for b in range(4):  # the beam's items, then items it does not hold (as build_leaf_examples appends them)
        head = [int(i) for i in beam.item_ids[b] if i >= 0]
        rows.append(head + [int(i) for i in extra[b] if int(i) not in head] + [-1])
    M = max(len(r) for r in rows)
    item_mat = torch.tensor([r + [-1] * (M - len(r)) for r in rows])
    got = _list_prefix_scores(model, ctx, trie=trie, item_mat=item_mat, beam=beam)
    sids = trie.sid_of(item_mat.reshape(-1).clamp(min=0)).view(4, M, 3).masked_fill((item_mat < 0).unsqueeze(-1), -1)
    want = candidate_prefix_scores(model, ctx, sids=sids, trie=trie)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
