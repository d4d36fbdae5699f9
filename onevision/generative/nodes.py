"""Node geometry: every prefix of the SID trie stands for the items under it.

The residual geometry of the VRQ levels scores a code by how close the query is to
the prefix's *reconstruction* (the sum of its codes' codebook vectors). On the demo
catalogs that reconstruction is 0.37-0.48 away from the items it stands for (unit
vectors), and a level-by-level softmax over such scores ranks the items far worse than
the items' own embeddings do: TEST HR@10 0.72 vs 0.86 (small), 0.58 vs 0.83 (default).

Here a depth-``d`` node is scored by the **mean aligned embedding of the items under
it** (the conditional mean an RQ decoder would reconstruct) and carries the **log of
its item count** (the mass a flat softmax over its items would give it): child ``c`` of
a kept prefix gets ``s (2 q.mu_c - |mu_c|^2) + log n_c``, i.e. ``-s |q - mu_c|^2 +
log n_c`` up to a per-prefix constant that the trie-normalised softmax removes. A node
that holds one item is that item, so the deep levels choose between items by their own
embeddings. Measured before training anything (TEST, exhaustive scoring under the
trie-normalised softmax, s = 10): HR@10 0.81 (small), 0.76 (default).

Per query the work stays ``beam x valid children x D``: only the children the trie
allows are read (level 0 is one product with the root's children), never the catalog.
Where the children still hold many items each (more than ``EXACT_MAX_ITEMS`` on average:
the middle level of a 1M-item catalog, 15 per child) their centroids buy little, and
where a prefix has many children (more than ``EXACT_MAX_FILL`` of the level's codes:
200 of 256 at 100k items) reading each one's centroid costs more than the codebook
product the beams share; such a level keeps the codebooks' residual geometry and adds
only ``log n``. Every level of both demo profiles reads centroids (1.0-1.4 items per
child, 7-14 children per prefix).
The table is derived from the leaf head's item store and the trie, so it follows a
catalog update with no retraining; it is built once per (store, trie) and cached.
"""

from __future__ import annotations

import torch

# a level scores its children by their centroids when they hold at most EXACT_MAX_ITEMS items on average and a prefix
# has at most EXACT_MAX_FILL x the level's codes as children (else: residual geometry + log n; see the module docstring)
EXACT_MAX_ITEMS = 4.0
EXACT_MAX_FILL = 0.25


class NodeGeometry:
    """Per depth ``1..levels``: each node's centroid, ``|mu|^2`` and ``log n`` (index ``N_d`` pads a missing child, -1).

    A one-item node's centroid is its item's row of the item store (no copy: at 1M items the deepest level would
    otherwise duplicate the 512 MB store); only nodes holding several items keep a mean of their own (``extra``)."""

    CHUNK = 65536  # leaves gathered at a time while building (bounds the build's extra memory)
    DENSE_BYTES = 64 << 20  # a level whose centroids fit in this many bytes also keeps them as one dense table (one read)

    def __init__(self, trie, store: torch.Tensor, leaf_rows: torch.Tensor, levels: int):
        """``store`` (S, D): the item embeddings (the leaf head's ``emb``); ``leaf_rows`` (N,): the store row of each trie
        leaf, in the trie's sorted leaf order."""
        self.trie, self.store = trie, store
        self.single, self.row, self.extra, self.sq, self.logn, self.exact, self.dense = [], [], [], [], [], [], []
        for depth in range(1, levels + 1):
            count, start = trie.leaf_count[depth], trie.leaf_start[depth]
            n_nodes = len(count)
            self.logn.append(torch.cat([count.clamp(min=1).float().log(), torch.zeros(1)]))
            fill = n_nodes / max(len(trie.leaf_count[depth - 1]), 1) / trie.codebook_sizes[depth - 1]  # children per prefix / codes
            exact = depth == 1 or (float(count.float().mean()) <= EXACT_MAX_ITEMS and fill <= EXACT_MAX_FILL)
            self.exact.append(exact)
            if not exact:  # residual geometry at this level: no centroid table
                self.single.append(None), self.row.append(None), self.extra.append(None), self.sq.append(None), self.dense.append(None)
                continue
            single = count == 1
            multi = torch.nonzero(~single).squeeze(1)  # (M,)
            row = torch.empty(n_nodes + 1, dtype=torch.long)
            row[:n_nodes][single] = leaf_rows[start[single]]
            row[:n_nodes][multi] = torch.arange(len(multi))
            row[n_nodes] = len(multi)  # the pad: extra's zero row
            extra = store.new_zeros(len(multi) + 1, store.shape[1])
            slot = torch.full((n_nodes,), -1, dtype=torch.long)
            slot[multi] = torch.arange(len(multi))
            target = slot[torch.repeat_interleave(torch.arange(n_nodes), count)]  # (N,) extra row of each leaf's node, -1: single
            for lo in range(0, len(target), self.CHUNK):
                t, r = target[lo : lo + self.CHUNK], leaf_rows[lo : lo + self.CHUNK]
                keep = t >= 0
                extra.index_add_(0, t[keep], store.index_select(0, r[keep]))
            extra[: len(multi)] /= count[multi].unsqueeze(1).to(store.dtype)
            is_single = torch.cat([single, torch.zeros(1, dtype=torch.bool)])
            self.single.append(is_single)
            self.row.append(row)
            self.extra.append(extra)
            self.dense.append(None)
            mu_sq = torch.empty(n_nodes + 1)
            for lo in range(0, n_nodes + 1, self.CHUNK):
                mu = self.centroids(depth - 1, torch.arange(lo, min(lo + self.CHUNK, n_nodes + 1)))
                mu_sq[lo : lo + len(mu)] = (mu * mu).sum(-1)
            self.sq.append(mu_sq)
            if (n_nodes + 1) * store.shape[1] * store.element_size() <= self.DENSE_BYTES:
                self.dense[-1] = self.centroids(depth - 1, torch.arange(n_nodes + 1))  # (N_d + 1, D), the pad row 0
        # (N_1, D): level 0 reads them all (a view of the dense table when there is one)
        self.root = self.dense[0][:-1] if self.dense[0] is not None else self.centroids(0, torch.arange(len(self.row[0]) - 1))

    def centroids(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(E,) depth-``level+1`` node ids (``N_d``: the pad) -> (E, D) their centroids."""
        if self.dense[level] is not None:
            return self.dense[level].index_select(0, nodes)
        single, row = self.single[level].index_select(0, nodes), self.row[level].index_select(0, nodes)
        own = self.store.index_select(0, torch.where(single, row, torch.zeros_like(row)))
        mean = self.extra[level].index_select(0, torch.where(single, torch.zeros_like(row), row))
        return torch.where(single.unsqueeze(1), own, mean)

    def memory_bytes(self) -> int:
        """What the table adds to the model (the item store it points into is the leaf head's)."""
        tensors = [t for t in (*self.single, *self.row, *self.extra, *self.sq, *self.logn, *self.dense) if t is not None]
        if self.dense[0] is None:
            tensors.append(self.root)
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def log_count(self, children: torch.Tensor, level: int) -> torch.Tensor:
        """(N, V) child node ids (-1: none) -> (N, V) their log item counts (0 where no child): the mass term of a level that
        keeps the residual geometry."""
        return self.logn[level].index_select(0, children.reshape(-1).clamp(min=-1) % len(self.logn[level])).view(children.shape)

    def logits(self, level: int, query: torch.Tensor, children: torch.Tensor, scale, group: int = 1) -> torch.Tensor:
        """Logits of ``children`` (N, V_level) depth-``level+1`` node ids (``SIDTrie.children`` of the rows' prefixes, -1:
        no such child) for ``query`` (N / group, D; ``group`` consecutive rows share one query, e.g. a query's beams) ->
        (N, V_level): ``scale x (2 q.mu - |mu|^2) + log n`` where a child exists, 0 elsewhere (the trie mask removes
        those). Reads only the existing children (``index_select``: advanced indexing was 5x slower at batch 1); a shared
        query is one product with its rows' children instead of a copy per child."""
        sq, logn = self.sq[level], self.logn[level]
        N, V = children.shape
        if level == 0:  # every row's parent is the root: one product with its children
            out = query.new_zeros(len(query), V)
            out[:, self.trie.edge_code[0]] = scale * (2 * query @ self.root.T - sq[:-1]) + logn[:-1]
            return out.repeat_interleave(group, 0) if group > 1 else out
        flat = torch.nonzero(children.reshape(-1) >= 0).squeeze(1)  # (E,) positions of existing children, row-major
        node = children.reshape(-1).index_select(0, flat)  # (E,)
        mu = self.centroids(level, node)  # (E, D)
        if group == 1:
            dots = (query.index_select(0, flat // V) * mu).sum(-1)  # (E,)
        else:  # the children of one query's rows are one run of ``flat``
            runs = torch.bincount(flat // (V * group), minlength=len(query)).tolist()
            dots = torch.cat([block @ q for block, q in zip(mu.split(runs), query, strict=True)])
        values = scale * (2 * dots - sq.index_select(0, node)) + logn.index_select(0, node)
        return query.new_zeros(N * V).index_copy(0, flat, values).view(N, V)


def node_geometry(model, trie) -> NodeGeometry | None:
    """The cached :class:`NodeGeometry` of ``model``'s item store under ``trie`` (None without node geometry or a leaf
    head). Cached on the leaf head: filling its store clears it."""
    leaf = model.leaf
    if not getattr(model.cfg, "node_geometry", False) or leaf is None or trie is None:
        return None
    cache = leaf.__dict__.setdefault("_nodes", {})
    key = id(trie)
    if key not in cache or cache[key].trie is not trie:
        cache.clear()
        # built outside inference mode: a table first built by a search is later read by training (autograd)
        with torch.inference_mode(False), torch.no_grad():
            rows = leaf.rows(trie.leaf_item).clamp(min=0)  # (N,) store row of each leaf
            cache[key] = NodeGeometry(trie, leaf.emb, rows, model.cfg.geo_levels)
    return cache[key]


def trie_paths(trie, sids: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(M, L) catalog SIDs -> per level ``l < levels`` the (M, V_l) child node ids of each SID's length-l prefix (-1: no
    such child); ``>= 0`` is the mask of the codes that may follow it, what teacher-forced training normalises over."""
    node = torch.zeros(len(sids), dtype=torch.long)
    out = []
    for level in range(levels):
        children = trie.children(level, node.clamp(min=0))
        out.append(children)
        node = children.gather(1, sids[:, level : level + 1].clamp(min=0)).squeeze(1)
    return out
