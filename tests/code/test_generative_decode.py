"""Constrained beam search: validity, uniqueness, ordering, exactness against exhaustive search, KV cache."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from onevision.generative.decode import beam_search, catalog_log_probs
from onevision.generative.model import ACTION_CLICK, Context, GeneratorConfig, SIDGenerator
from onevision.generative.trie import SIDTrie

SIZES = (4, 5, 3)


def tiny_model(seed: int = 0, std: float = 0.5) -> SIDGenerator:
    """A random, confident (large weights) tiny model: sharp distributions stress the search."""
    torch.manual_seed(seed)
    cfg = GeneratorConfig(
        codebook_sizes=SIZES, token_dim=8, n_visual_tokens=4, embed_dim=6, n_users=3, history_len=2,
        d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=2, dropout=0.0,
    )
    model = SIDGenerator(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def random_context(B: int, seed: int = 0) -> Context:
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(0, 3, (B, 2, 3), generator=g)
    history[:, 1] = -1  # second slot empty
    action = torch.full((B, 2), 0)
    action[:, 0] = ACTION_CLICK
    return Context(torch.randn(B, 4, 8, generator=g), torch.randn(B, 6, generator=g), torch.randint(0, 4, (B,), generator=g), history, action)


def catalog(n: int, seed: int = 0) -> SIDTrie:
    every = np.array(list(itertools.product(*(range(v) for v in SIZES))))
    rng = np.random.default_rng(seed)
    return SIDTrie(every[rng.choice(len(every), n, replace=False)], rng.permutation(1000)[:n], SIZES)


def test_exhaustive_beam_equals_exact_top_k():
    """Beam width >= the widest trie level: beam search is exhaustive and must equal exact scoring."""
    model, trie, ctx = tiny_model(), catalog(25), random_context(8)
    width = max(trie.n_nodes(level) for level in range(trie.n_levels + 1) if level < trie.n_levels) * max(SIZES)
    res = beam_search(model, ctx, trie=trie, beam_width=width, k=10)
    exact = catalog_log_probs(model, ctx, trie.sids)  # (B, N) log p of every catalog SID
    top = exact.topk(10, dim=1)
    assert torch.equal(res.item_ids, trie.leaf_item[top.indices])
    torch.testing.assert_close(res.scores, top.values, atol=1e-5, rtol=0)


def test_results_are_unique_valid_and_sorted_with_exact_scores():
    model, trie, ctx = tiny_model(1), catalog(40, seed=2), random_context(16, seed=1)
    res = beam_search(model, ctx, trie=trie, beam_width=3, k=7)  # narrow beam, k > beam width
    assert res.invalid_rate == 0.0
    assert (res.item_ids >= 0).all()
    for row in res.item_ids.tolist():
        assert len(set(row)) == len(row)
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    # each returned SID's score is its exact log-probability under the model
    exact = catalog_log_probs(model, ctx, trie.sids)
    leaf = torch.searchsorted(trie.leaf_item.sort().values, res.item_ids)  # map items back to trie rows
    rows = trie.leaf_item.argsort()[leaf]
    torch.testing.assert_close(res.scores, exact.gather(1, rows), atol=1e-5, rtol=0)
    assert torch.equal(trie.sids[rows], res.sids)


def test_constrained_never_emits_an_sid_outside_the_catalog():
    """A random model on many queries: unconstrained search invents SIDs, constrained search never does."""
    trie = catalog(12, seed=5)  # sparse catalog: 12 of 60 possible SIDs
    invalid_unconstrained = 0.0
    for seed in range(4):
        model, ctx = tiny_model(seed + 10, std=0.8), random_context(128, seed=seed)
        res = beam_search(model, ctx, trie=trie, beam_width=4, k=10)
        assert res.invalid_rate == 0.0
        assert (res.item_ids >= 0).all() and torch.isfinite(res.scores).all()
        assert torch.isin(res.item_ids, trie.leaf_item).all()
        invalid_unconstrained += beam_search(model, ctx, trie=trie, beam_width=4, k=10, constrained=False).invalid_rate
    assert invalid_unconstrained > 0  # the test would catch a search that ignores the trie


def test_pads_when_the_catalog_has_fewer_than_k_items():
    model, trie = tiny_model(), catalog(5, seed=7)
    res = beam_search(model, random_context(3), trie=trie, beam_width=8, k=9)
    assert (res.item_ids[:, :5] >= 0).all() and (res.item_ids[:, 5:] == -1).all()
    assert torch.isinf(res.scores[:, 5:]).all() and (res.sids[:, 5:] == -1).all()
    assert res.invalid_rate == 0.0


def test_kv_cache_decoding_matches_teacher_forcing():
    model, ctx = tiny_model(3), random_context(5, seed=3)
    sids = torch.tensor([[1, 2, 0], [3, 4, 2], [0, 0, 1], [2, 1, 1], [1, 3, 2]])
    with torch.no_grad():
        memory, mask = model.encode(ctx)
        full = model.logits_for(memory, mask, sids=sids)  # teacher forcing, causal mask
        cross, caches = model.cross_kv(memory), [{} for _ in model.decoder]
        for level in range(3):
            x = model.step_input(level, None if level == 0 else sids[:, level - 1], len(sids))
            h = model.decode(x, cross, mask, caches)
            torch.testing.assert_close(model.level_logits(h[:, 0], level), full[level], atol=1e-5, rtol=0)


def test_unused_history_slots_and_visual_pooling():
    model, ctx = tiny_model(5), random_context(4, seed=5)
    sids = torch.tensor([[1, 2, 0], [3, 4, 2], [0, 0, 1], [2, 1, 1]])
    short = Context(ctx.visual, ctx.image, ctx.user, ctx.history[:, :1], ctx.action[:, :1])  # slot 1 is empty everywhere
    with torch.no_grad():
        full = model.logits_for(*model.encode(ctx), sids=sids)
        trimmed = model.logits_for(*model.encode(short), sids=sids)
    for a, b in zip(full, trimmed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    pooled = SIDGenerator(GeneratorConfig(codebook_sizes=SIZES, token_dim=8, n_visual_tokens=4, visual_grid=1, embed_dim=6, n_users=3, history_len=2, d_model=16, n_heads=2))
    memory, mask = pooled.encode(ctx)
    assert memory.shape[1] == 1 + 1 + 1 + 1  # image, one pooled visual cell, user, one used history slot
    with pytest.raises(ValueError, match="square"):
        GeneratorConfig(n_visual_tokens=6, visual_grid=2)


def test_forward_loss_is_the_mean_sid_nll():
    model, ctx = tiny_model(4), random_context(6, seed=4)
    sids = torch.tensor([[1, 2, 0], [3, 4, 2], [0, 0, 1], [2, 1, 1], [1, 3, 2], [0, 4, 0]])
    _, loss = model(ctx, sids)
    with torch.no_grad():
        memory, mask = model.encode(ctx)
        nll = -model.sequence_log_prob(memory, mask, sids)
    torch.testing.assert_close(loss, nll.mean(), atol=1e-5, rtol=0)
    w = torch.tensor([1.0, 0, 0, 0, 0, 3.0])
    _, weighted = model(ctx, sids, weights=w)
    torch.testing.assert_close(weighted, (nll[0] + 3 * nll[5]) / 4, atol=1e-5, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        beam_search(tiny_model(), random_context(1), trie=catalog(5), beam_width=0, k=3)
    with pytest.raises(ValueError, match="divisible"):
        GeneratorConfig(d_model=30, n_heads=4)
