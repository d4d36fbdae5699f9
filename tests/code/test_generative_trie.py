"""SID trie: construction, masks (dense and CSR), transitions, lookups."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from onevision.generative.trie import SIDTrie

SIZES = (4, 5, 3)


def random_catalog(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    every = np.array(list(itertools.product(*(range(v) for v in SIZES))))
    rng = np.random.default_rng(seed)
    sids = every[rng.choice(len(every), size=n, replace=False)]
    return sids, rng.permutation(10_000)[:n].astype(np.int64)


def test_nodes_are_lexicographic_prefixes_and_masks_match_brute_force():
    sids, items = random_catalog(25)
    for dense_limit in (0, 1 << 20):  # CSR path and dense path
        trie = SIDTrie(sids, items, SIZES, dense_limit=dense_limit)
        for level in range(len(SIZES)):
            prefixes = sorted({tuple(s[:level]) for s in sids.tolist()})
            assert trie.n_nodes(level) == len(prefixes)
            mask = trie.allowed(level, torch.arange(len(prefixes)))  # (N_l, V_l)
            for node, prefix in enumerate(prefixes):
                expected = {s[level] for s in sids.tolist() if tuple(s[:level]) == prefix}
                assert set(torch.nonzero(mask[node]).flatten().tolist()) == expected
                for code in range(SIZES[level]):
                    child = int(trie.child(level, torch.tensor([node]), torch.tensor([code]))[0])
                    if code in expected:
                        assert child == sorted({tuple(s[: level + 1]) for s in sids.tolist()}).index((*prefix, code))
                    else:
                        assert child == -1


def test_dense_and_csr_masks_agree_on_repeated_and_shuffled_nodes():
    sids, items = random_catalog(40, seed=3)
    dense, csr = SIDTrie(sids, items, SIZES), SIDTrie(sids, items, SIZES, dense_limit=0)
    assert all(d is not None for d in dense.dense) and all(d is None for d in csr.dense)
    for level in range(3):
        nodes = torch.randint(0, dense.n_nodes(level), (50,), generator=torch.Generator().manual_seed(level))
        assert torch.equal(dense.allowed(level, nodes), csr.allowed(level, nodes))


def test_lookup_and_sid_of_round_trip():
    sids, items = random_catalog(30, seed=1)
    trie = SIDTrie(sids, items, SIZES)
    assert torch.equal(trie.lookup(torch.from_numpy(sids)), torch.from_numpy(items))
    assert torch.equal(trie.sid_of(items), torch.from_numpy(sids))
    assert trie.sid_of(np.array([-5, 10_001])).eq(-1).all()
    every = torch.tensor(list(itertools.product(*(range(v) for v in SIZES))))
    known = {tuple(s) for s in sids.tolist()}
    found = trie.lookup(every)
    assert ((found >= 0) == torch.tensor([tuple(s) in known for s in every.tolist()])).all()


def test_from_sid_table_and_codebook_sizes_default_to_max_plus_one():
    table = pd.DataFrame({"item_id": [7, 8, 9], "code_0": [0, 1, 1], "code_1": [2, 0, 1]})
    trie = SIDTrie.from_sid_table(table)
    assert trie.codebook_sizes == (2, 3)
    assert trie.n_items == 3 and trie.n_levels == 2
    assert trie.lookup(torch.tensor([[1, 1], [0, 0]])).tolist() == [9, -1]


def test_rejects_duplicate_sids_and_codes_beyond_codebooks():
    with pytest.raises(ValueError, match="unique"):
        SIDTrie(np.array([[0, 1], [0, 1]]), np.array([1, 2]))
    with pytest.raises(ValueError, match="codebook"):
        SIDTrie(np.array([[0, 3]]), np.array([1]), (2, 3))
    with pytest.raises(ValueError, match="code_0"):
        SIDTrie.from_sid_table(pd.DataFrame({"item_id": [1], "code_1": [0]}))


def test_children_name_every_code_s_child_in_one_read_and_subtree_means_average_their_items():
    sids, items = random_catalog(30, seed=5)
    trie = SIDTrie(sids, items, SIZES)
    rows = trie.sids.numpy()  # the trie's sorted leaf order
    values = torch.from_numpy(np.stack([rows[:, 2].astype(np.float32), np.ones(len(rows), np.float32)], 1))
    for level in range(len(SIZES)):
        nodes = torch.randint(0, trie.n_nodes(level), (20,), generator=torch.Generator().manual_seed(level))
        table = trie.children(level, nodes)  # (20, V)
        V = SIZES[level]
        one_by_one = trie.child(level, nodes.repeat_interleave(V), torch.arange(V).repeat(len(nodes))).view(len(nodes), V)
        assert torch.equal(table, one_by_one) and torch.equal(table >= 0, trie.allowed(level, nodes))
        means = trie.subtree_means(values, level + 1)  # (N_{level+1}, 2)
        prefixes = sorted({tuple(s[: level + 1]) for s in rows.tolist()})
        for node, prefix in enumerate(prefixes):
            under = [s for s in rows.tolist() if tuple(s[: level + 1]) == prefix]
            assert means[node, 0].item() == pytest.approx(np.mean([s[2] for s in under]))
            assert means[node, 1].item() == pytest.approx(1.0)
