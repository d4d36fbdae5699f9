"""Prefix trie over the catalog's semantic IDs, stored as tensors for batched decoding.

Constrained beam search asks two questions at every step, for all B x W beams at
once: *which codes may follow this prefix?* (a mask) and *which prefix do we
reach with this code?* (a transition). Both are answered without Python loops.

Numbering: the nodes at depth ``l`` are the distinct length-``l`` prefixes of the
catalog's SIDs, numbered in lexicographic order (depth 0 is the root, node 0).
Listing the edges out of depth ``l`` sorted by (parent, code) then lists the
depth ``l+1`` nodes in that same order, so **an edge's position is its child's
id** and the whole trie is, per level, CSR:

    edge_code[l]:  (E_l,)       code of each edge, grouped by parent
    indptr[l]:     (N_l + 1,)   edges of parent p are edge_code[l][indptr[p]:indptr[p+1]]
    edge_key[l]:   (E_l,)       parent * V_l + code, sorted: child = searchsorted(edge_key, key)

Depth ``L`` nodes are full SIDs, i.e. items: ``leaf_item[n]`` is the item id of
leaf ``n``. Because nodes and leaves share the lexicographic order, the leaves
under a depth-``l`` node are a contiguous run: ``leaf_start[l][n]`` and
``leaf_count[l][n]`` (the subtree's catalog size) tell dynamic pruning how many
items a kept prefix still covers and, when that is one, which item it is. Where ``N_l x V_l`` is small (every level of the demo catalog) the
mask is also kept dense, ``(N_l, V_l)`` bool, so a step's mask is one gather;
beyond ``dense_limit`` cells it is built from CSR by one scatter.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from onevision.generative.tensors import take_rows

DENSE_LIMIT = 1 << 24  # cells per level kept as a dense bool mask (16 MB)


def sid_columns(frame: pd.DataFrame) -> list[str]:
    """The ``code_0..code_{L-1}`` columns of a SID table, in level order."""
    cols = sorted((c for c in frame.columns if c.startswith("code_")), key=lambda c: int(c.split("_")[1]))
    if not cols or cols != [f"code_{i}" for i in range(len(cols))]:
        raise ValueError(f"SID table needs columns code_0..code_{{L-1}}, got {list(frame.columns)}")
    return cols


class SIDTrie:
    """The catalog's SIDs as a per-level CSR prefix trie (see the module docstring)."""

    def __init__(self, sids: np.ndarray, item_ids: np.ndarray, codebook_sizes: tuple[int, ...] | None = None, *, dense_limit: int = DENSE_LIMIT):
        sids = np.asarray(sids, dtype=np.int64)
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if sids.ndim != 2 or len(sids) != len(item_ids) or len(sids) == 0:
            raise ValueError(f"sids must be (N, L) with N == len(item_ids) > 0, got {sids.shape} and {item_ids.shape}")
        if (sids < 0).any():
            raise ValueError("SID codes must be >= 0")
        N, L = sids.shape
        sizes = tuple(int(v) for v in (codebook_sizes or (sids.max(axis=0) + 1)))
        if len(sizes) != L or (sids >= np.array(sizes)).any():
            raise ValueError(f"codes exceed codebook sizes {sizes}")
        order = np.lexsort(sids.T[::-1])  # lexicographic by code_0, code_1, ...
        sids, item_ids = sids[order], item_ids[order]
        if N > 1 and (np.diff(sids, axis=0) == 0).all(axis=1).any():
            dup = sids[np.flatnonzero((np.diff(sids, axis=0) == 0).all(axis=1))[0]]
            raise ValueError(f"SIDs must be unique per item; {tuple(dup.tolist())} is shared")
        self.codebook_sizes = sizes
        self.sids = torch.from_numpy(sids)  # (N, L) sorted
        self.leaf_item = torch.from_numpy(item_ids)  # (N,) item id of leaf n
        self.edge_code: list[torch.Tensor] = []
        self.edge_key: list[torch.Tensor] = []
        self.indptr: list[torch.Tensor] = []
        self.dense: list[torch.Tensor | None] = []
        self.leaf_count: list[torch.Tensor] = []  # per depth 0..L: (N_l,) catalog items under each node
        self.leaf_start: list[torch.Tensor] = []  # per depth 0..L: (N_l,) first leaf (sorted row) under each node
        parent = np.zeros(N, dtype=np.int64)  # node id of each SID's length-l prefix (root: 0)
        n_parents = 1
        for level in range(L):
            self._add_subtree_sizes(parent, n_parents)
            V = sizes[level]
            key = parent * V + sids[:, level]  # (N,) non-decreasing: rows are sorted
            first = np.ones(N, dtype=bool)
            first[1:] = key[1:] != key[:-1]
            edges = key[first]  # (E,) one per distinct length-(l+1) prefix, sorted
            edge_parent, edge_code = edges // V, edges % V
            indptr = np.zeros(n_parents + 1, dtype=np.int64)
            np.add.at(indptr, edge_parent + 1, 1)
            self.edge_key.append(torch.from_numpy(edges))
            self.edge_code.append(torch.from_numpy(edge_code))
            self.indptr.append(torch.from_numpy(np.cumsum(indptr)))
            if n_parents * V <= dense_limit:
                dense = torch.zeros(n_parents, V, dtype=torch.bool)
                dense[torch.from_numpy(edge_parent), torch.from_numpy(edge_code)] = True
                self.dense.append(dense)
            else:
                self.dense.append(None)
            parent = np.cumsum(first) - 1  # child id = edge position
            n_parents = len(edges)
        self._add_subtree_sizes(parent, n_parents)  # depth L: one leaf each, leaf n = row n

    def _add_subtree_sizes(self, node_of_row: np.ndarray, n_nodes: int) -> None:
        """Rows are sorted and node ids lexicographic, so each node's rows are one contiguous run."""
        count = np.bincount(node_of_row, minlength=n_nodes)  # (n_nodes,)
        self.leaf_count.append(torch.from_numpy(count.astype(np.int64)))
        self.leaf_start.append(torch.from_numpy((np.cumsum(count) - count).astype(np.int64)))

    @classmethod
    def from_sid_table(cls, table: pd.DataFrame, codebook_sizes: tuple[int, ...] | None = None, **kwargs) -> SIDTrie:
        """From ``DataFrame(item_id, code_0..code_{L-1})`` (``onevision.vrq.api.load_sid_table``)."""
        cols = sid_columns(table)
        return cls(table[cols].to_numpy(np.int64), table["item_id"].to_numpy(np.int64), codebook_sizes, **kwargs)

    # ------------------------------------------------------------------ facts
    @property
    def n_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def n_items(self) -> int:
        return len(self.leaf_item)

    def n_nodes(self, level: int) -> int:
        """Nodes at depth ``level`` (0: the root)."""
        return len(self.indptr[level]) - 1

    # ------------------------------------------------------------------ batched queries
    def allowed(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(M,) depth-``level`` node ids -> (M, V_level) bool: codes that continue a catalog SID."""
        dense = self.dense[level]
        if dense is not None:
            return take_rows(dense, nodes)  # (M, V)
        indptr, codes = self.indptr[level], self.edge_code[level]
        start, count = indptr[nodes], indptr[nodes + 1] - indptr[nodes]  # (M,)
        rows = torch.repeat_interleave(torch.arange(len(nodes)), count)  # (E_sel,)
        # position of each selected edge: its parent's start + its rank among the parent's edges
        rank = torch.arange(len(rows)) - torch.repeat_interleave(count.cumsum(0) - count, count)
        mask = torch.zeros(len(nodes), self.codebook_sizes[level], dtype=torch.bool)
        mask[rows, codes[torch.repeat_interleave(start, count) + rank]] = True
        return mask  # (M, V)

    def children(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(M,) depth-``level`` node ids -> (M, V_level) long: the depth-``level+1`` node id of each code's child, -1
        where the code continues no catalog SID. One read of a dense child table where the level is small enough
        (built once, ``DENSE_LIMIT / 8`` cells at most), else one CSR read for all rows (a child's id is its edge's
        position)."""
        tables = self.__dict__.setdefault("_child_tables", {})
        if level not in tables:
            n_parents, V = self.n_nodes(level), self.codebook_sizes[level]
            tables[level] = self._children_csr(level, torch.arange(n_parents)) if n_parents * V * 8 <= DENSE_LIMIT else None
        table = tables[level]
        return take_rows(table, nodes) if table is not None else self._children_csr(level, nodes)

    def _children_csr(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        indptr, codes = self.indptr[level], self.edge_code[level]
        start, count = indptr[nodes], indptr[nodes + 1] - indptr[nodes]  # (M,)
        rows = torch.repeat_interleave(torch.arange(len(nodes)), count)  # (E_sel,)
        edge = torch.arange(len(rows)) + torch.repeat_interleave(start - (count.cumsum(0) - count), count)  # (E_sel,) edge positions
        out = torch.full((len(nodes), self.codebook_sizes[level]), -1, dtype=torch.long)
        out[rows, codes[edge]] = edge
        return out

    def subtree_means(self, values: torch.Tensor, depth: int) -> torch.Tensor:
        """(N, A) per-leaf values in the trie's sorted leaf order -> (N_depth, A) their mean over each depth-``depth``
        node's items (subtrees are contiguous runs of leaves: one prefix sum)."""
        cum = torch.cat([values.new_zeros(1, values.shape[1]), values.cumsum(0)])  # (N + 1, A)
        start, count = self.leaf_start[depth], self.leaf_count[depth]
        return (cum[start + count] - cum[start]) / count.clamp(min=1).unsqueeze(1).to(values.dtype)

    def child(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Depth-``level`` nodes + next codes -> depth-``level+1`` node ids, -1 where no such prefix."""
        keys = nodes * self.codebook_sizes[level] + codes  # (M,)
        table = self.edge_key[level]
        pos = torch.searchsorted(table, keys).clamp(max=len(table) - 1)  # (M,)
        found = (table[pos] == keys) & (nodes >= 0) & (codes >= 0) & (codes < self.codebook_sizes[level])
        return torch.where(found, pos, torch.full_like(pos, -1))

    def path_masks(self, sids: torch.Tensor, levels: int | None = None) -> list[torch.Tensor]:
        """(M, L) catalog SIDs -> per level l < ``levels`` (default L) the (M, V_l) bool mask of the codes that may
        follow each SID's length-l prefix: what teacher-forced training normalises over, as decoding does."""
        node = torch.zeros(len(sids), dtype=torch.long)
        out = []
        for level in range(self.n_levels if levels is None else levels):
            out.append(self.allowed(level, node.clamp(min=0)))
            node = self.child(level, node, sids[:, level])
        return out

    def lookup(self, sids: torch.Tensor) -> torch.Tensor:
        """(M, L) SIDs -> (M,) item ids, -1 for an SID that no catalog item has."""
        node = torch.zeros(len(sids), dtype=torch.long)
        for level in range(self.n_levels):
            node = self.child(level, node, sids[:, level])
        return torch.where(node >= 0, self.leaf_item[node.clamp(min=0)], torch.full_like(node, -1))

    def sid_of(self, item_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(M,) item ids -> (M, L) SIDs; -1 rows for items not in the trie."""
        item_ids = torch.tensor(np.asarray(item_ids, dtype=np.int64))
        order = torch.argsort(self.leaf_item)
        sorted_items = self.leaf_item[order]
        pos = torch.searchsorted(sorted_items, item_ids).clamp(max=len(sorted_items) - 1)
        found = sorted_items[pos] == item_ids
        out = self.sids[order[pos]].clone()
        out[~found] = -1
        return out

    def subtree_size(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """(M,) depth-``depth`` node ids -> (M,) catalog items under each (0 for -1, a prefix no item has)."""
        counts = self.leaf_count[depth]
        return torch.where(nodes >= 0, counts[nodes.clamp(min=0)], torch.zeros_like(nodes))

    def only_leaf(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """(M,) depth-``depth`` node ids -> (M,) the leaf (sorted row) under each; meaningful where the subtree holds one item."""
        return self.leaf_start[depth][nodes.clamp(min=0)]

    def memory_bytes(self) -> int:
        tensors = [self.sids, self.leaf_item, *self.edge_code, *self.edge_key, *self.indptr, *self.leaf_count, *self.leaf_start,
                   *(d for d in self.dense if d is not None)]
        return int(sum(t.numel() * t.element_size() for t in tensors))
