"""Node geometry (onevision.generative.nodes): a prefix is scored by the items under it.

What must hold: a child's logit is ``-s |q - mu|^2 + log n`` up to a per-prefix constant, where ``mu`` is the mean
embedding of its items (an item's own embedding for a one-item prefix); the search, exhaustive scoring and training
share that normalisation; the table follows the item store.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from onevision.generative import nodes
from onevision.generative.checkpoint import build_generator
from onevision.generative.geosearch import candidate_prefix_scores, geometric_beam_search
from onevision.generative.model import GeneratorConfig, log_softmax_over
from onevision.generative.nodes import node_geometry, trie_paths
from tests.code.test_geosearch import D, contexts, tiny_catalog


def nodes_model(trie, books, emb, items, *, tied: bool = True, perturb: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    cfg = GeneratorConfig(codebook_sizes=trie.codebook_sizes, token_dim=4, n_visual_tokens=4, embed_dim=D, history_len=2, d_model=16, n_heads=2,
                          n_enc_layers=1, n_dec_layers=1, dropout=0.0, geo_levels=2, geo_dim=D, tied_head=tied, node_geometry=True,
                          leaf_items=len(items), leaf_categories=3, leaf_brands=2)
    model = build_generator(cfg).eval()
    model.set_codebooks(books)
    table = pd.DataFrame({"item_id": items, "category": np.arange(len(items)) % 3, "brand": np.arange(len(items)) % 2, "price": 10.0})
    model.leaf.fill(table, items, emb)
    if perturb:
        with torch.no_grad():
            for layer in (model.query_head, model.query_mix, *model.heads[:2]):
                layer.weight.normal_(0.0, perturb)
    return model


def _reference_scores(query: np.ndarray, emb: np.ndarray, items: np.ndarray, trie, scale: float, books, exact: list[bool]) -> dict[int, float]:
    """Plain Python: each item's sum over the geometric levels of log-softmax over its prefix's siblings of
    ``-scale |q - mu|^2 + log n`` (mu, n: the mean embedding and count of the items under the child; at a level that is
    not ``exact``, mu is the child prefix's codebook reconstruction)."""
    sids = trie.sids.numpy()
    row = {int(i): r for r, i in enumerate(items)}
    vec = np.stack([emb[row[int(i)]] for i in trie.leaf_item])  # trie leaf order
    out = {}
    for leaf, sid in enumerate(sids):
        total = 0.0
        for level in range(2):
            prefix = tuple(sid[:level])
            siblings = sorted({int(s[level]) for s in sids if tuple(s[:level]) == prefix})
            logits = {}
            for code in siblings:
                under = (sids[:, : level + 1] == np.array([*prefix, code])).all(1)
                mu = vec[under].mean(0) if exact[level] else sum(books[j][c] for j, c in enumerate((*prefix, code)))
                logits[code] = -scale * float(((query - mu) ** 2).sum()) + np.log(under.sum())
            top = max(logits.values())
            total += logits[int(sid[level])] - top - np.log(sum(np.exp(v - top) for v in logits.values()))
        out[int(trie.leaf_item[leaf])] = total
    return out


@pytest.mark.parametrize("exact_max_items", [100.0, 4.0])
def test_the_prior_scores_children_by_their_items_centroid_and_count(monkeypatch, exact_max_items):
    """With the bound high every level reads centroids; at 4 the tiny catalog's level 1 (12 items per child) keeps the
    codebooks' reconstruction and adds only the log count."""
    monkeypatch.setattr(nodes, "EXACT_MAX_ITEMS", exact_max_items)
    monkeypatch.setattr(nodes, "EXACT_MAX_FILL", 1.0)  # the tiny catalog's prefixes use most of its 4 codes
    books, emb, items, trie = tiny_catalog()
    model = nodes_model(trie, books, emb, items)
    assert node_geometry(model, trie).exact == [True, exact_max_items > 12]
    rng = np.random.default_rng(2)
    q = (emb[rng.integers(len(emb), size=4)] + 0.3 * rng.normal(size=(4, D))).astype(np.float32)
    ctx = contexts(rng, q)
    res = geometric_beam_search(model, ctx, trie=trie, beam_width=64, k=len(items), max_leaves=len(items), learned_weight=0.0, use_leaf=False)
    scale = float(model.geo_log_scale[0].detach().exp())
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # the store keeps L2-normalised embeddings
    for b in range(4):
        want = _reference_scores(q[b].astype(np.float64), unit.astype(np.float64), items, trie, scale, [b.astype(np.float64) for b in books],
                                 node_geometry(model, trie).exact)
        got = {int(i): float(s) for i, s in zip(res.item_ids[b], res.scores[b], strict=True) if i >= 0}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-4, atol=1e-3)
    if not exact_max_items > 12:
        return
    # a one-item prefix is its item: its centroid is the item's own (normalised) embedding
    geom = node_geometry(model, trie)
    single = torch.nonzero(trie.leaf_count[2] == 1)[:, 0]
    leaf = trie.leaf_start[2][single]
    rows = model.leaf.rows(trie.leaf_item[leaf])
    torch.testing.assert_close(geom.centroids(1, single), model.leaf.emb[rows])
    # a node of several items keeps their mean
    many = torch.nonzero(trie.leaf_count[1] > 1)[:, 0]
    for node in many.tolist():
        start, count = int(trie.leaf_start[1][node]), int(trie.leaf_count[1][node])
        items_rows = model.leaf.rows(trie.leaf_item[start : start + count])
        torch.testing.assert_close(geom.centroids(0, torch.tensor([node]))[0], model.leaf.emb[items_rows].mean(0))


@pytest.mark.parametrize("exact_max_items", [100.0, 4.0])
def test_decoder_alone_search_equals_exhaustive_scoring_and_training_shares_its_normalisation(monkeypatch, exact_max_items):
    monkeypatch.setattr(nodes, "EXACT_MAX_ITEMS", exact_max_items)
    monkeypatch.setattr(nodes, "EXACT_MAX_FILL", 1.0)
    books, emb, items, trie = tiny_catalog()
    model = nodes_model(trie, books, emb, items, perturb=0.1)
    rng = np.random.default_rng(4)
    q = (emb[rng.integers(len(emb), size=5)] + 0.3 * rng.normal(size=(5, D))).astype(np.float32)
    ctx = contexts(rng, q)
    n_prefixes = len({tuple(s[:2]) for s in trie.sids.tolist()})
    res = geometric_beam_search(model, ctx, trie=trie, beam_width=n_prefixes, k=len(items), max_leaves=len(items), geo_weight=0.0, use_leaf=False)
    exhaustive = candidate_prefix_scores(model, ctx, sids=trie.sids.unsqueeze(0).expand(5, -1, -1), learned_weight=1.0, trie=trie)
    for b in range(5):
        got = {int(i): float(s) for i, s in zip(res.item_ids[b], res.scores[b], strict=True) if i >= 0}
        want = {int(i): float(s) for i, s in zip(trie.leaf_item, exhaustive[b], strict=True)}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-5, atol=1e-4)
    # the loss training minimises for an item is minus the score decoding gives it
    targets = trie.sids[torch.from_numpy(rng.integers(len(items), size=5))]
    geom = node_geometry(model, trie)
    with torch.no_grad():
        losses = []
        for i in range(5):
            children = trie_paths(trie, targets[i : i + 1], 2)
            losses.append(model(ctx.index(torch.tensor([i])), targets[i : i + 1], allowed=[c >= 0 for c in children], children=children, nodes=geom)[1])
    decoded = candidate_prefix_scores(model, ctx, sids=targets.unsqueeze(1), learned_weight=1.0, trie=trie)[:, 0]
    torch.testing.assert_close(torch.stack(losses), -decoded, atol=1e-4, rtol=0)
    # and the loss is a softmax over the trie's children only: a code outside them changes nothing
    with torch.no_grad():
        h = torch.zeros(1, 16)
        children = trie_paths(trie, targets[:1], 2)
        resid = model.residuals(ctx.image[:1], targets[:1])[:, 1]
        logits = model.level_logits(h, 1, query=ctx.image[:1], children=children[1], nodes=geom, shift=torch.zeros(1, D), resid=resid)
    allowed = children[1] >= 0
    torch.testing.assert_close(allowed, trie.path_masks(targets[:1], 2)[1])
    if geom.exact[1]:
        assert (logits[~allowed] == 0).all()
    assert torch.isinf(log_softmax_over(logits, allowed)[~allowed]).all()


def test_the_node_table_follows_the_item_store():
    books, emb, items, trie = tiny_catalog()
    model = nodes_model(trie, books, emb, items)
    first = node_geometry(model, trie)
    assert node_geometry(model, trie) is first  # cached
    table = pd.DataFrame({"item_id": items, "category": 0, "brand": 0, "price": 1.0})
    moved = np.roll(emb, 1, axis=0)
    model.leaf.fill(table, items, moved)
    second = node_geometry(model, trie)
    assert second is not first
    want = trie.subtree_means(F.normalize(torch.from_numpy(moved), dim=-1)[model.leaf.rows(trie.leaf_item)], 1)
    torch.testing.assert_close(second.centroids(0, torch.arange(len(want))), want)
    # a model without node geometry keeps the codebooks' residual geometry
    plain = nodes_model(trie, books, emb, items)
    plain.cfg.node_geometry = False
    assert node_geometry(plain, trie) is None


def test_a_table_first_built_by_a_search_trains():
    """The search runs under inference mode; the cached table must still serve training's autograd after it."""
    books, emb, items, trie = tiny_catalog()
    model = nodes_model(trie, books, emb, items, perturb=0.1)
    rng = np.random.default_rng(6)
    ctx = contexts(rng, emb[:3].copy())
    geometric_beam_search(model, ctx, trie=trie, beam_width=4, k=4, use_leaf=False)  # builds and caches the table
    model.train()
    targets = trie.sids[:3]
    children = trie_paths(trie, targets, 2)
    _, loss = model(ctx, targets, allowed=[c >= 0 for c in children], children=children, nodes=node_geometry(model, trie))
    loss.backward()
    assert model.query_head.weight.grad is not None and bool(torch.isfinite(model.query_head.weight.grad).all())


def test_unconstrained_node_search_counts_dead_prefixes_and_names_only_catalog_items():
    """Without the trie mask a missing child scores 0 and may survive; it is counted dead and expands to no item. (That a
    dead prefix is not read as node 0's children at the next level is not observable here: only items with their own
    SIDs come back either way.)"""
    rng = np.random.default_rng(3)
    books, emb, items, trie = tiny_catalog(3, n_items=6)
    model = nodes_model(trie, books, emb, items)
    ctx = contexts(rng, rng.normal(size=(16, D)).astype(np.float32))
    free = geometric_beam_search(model, ctx, trie=trie, beam_width=12, k=5, constrained=False, learned_weight=0.0)
    assert 0.0 < free.dead_prefixes < 1.0
    ok = free.item_ids >= 0
    assert torch.isin(free.item_ids[ok], trie.leaf_item).all() and (trie.lookup(free.sids[ok]) == free.item_ids[ok]).all()
    masked = geometric_beam_search(model, ctx, trie=trie, beam_width=12, k=5, learned_weight=0.0)
    assert masked.invalid_rate == 0.0 and masked.dead_prefixes is None


def test_the_dense_table_and_the_store_pointers_give_the_same_centroids(monkeypatch):
    """Small levels keep one dense centroid table; large ones point one-item nodes into the item store: same numbers."""
    books, emb, items, trie = tiny_catalog()
    model = nodes_model(trie, books, emb, items)
    rows = model.leaf.rows(trie.leaf_item)
    dense = nodes.NodeGeometry(trie, model.leaf.emb, rows, 2)
    monkeypatch.setattr(nodes.NodeGeometry, "DENSE_BYTES", 0)
    pointers = nodes.NodeGeometry(trie, model.leaf.emb, rows, 2)
    assert dense.dense[0] is not None and pointers.dense[0] is None
    for level in (0, 1):
        if dense.exact[level]:
            every = torch.arange(trie.n_nodes(level + 1) + 1)
            torch.testing.assert_close(dense.centroids(level, every), pointers.centroids(level, every))
