"""Tokenizer metrics: codebook usage, uniqueness, multi-view consistency, retrieval through codes.

Small pure functions over codes and embeddings (faiss ``contrib/evaluation``
style), shared by stage ``vrq`` and ``benchmarks/vrq_ablation.py``.

* CUR (codebook utilisation rate) per level: share of a level's codes that at
  least one item uses; perplexity: ``exp`` of the entropy of code usage (K when
  every code is used equally, 1 when one code takes everything).
* ICR (independent coding rate): share of items whose L-level code tuple is
  unique *before* disambiguation; ``max_items_per_sid`` the largest group.
* Multi-view consistency: share of held-out query views whose level-1 code
  (and level-1..2 prefix) equals their item's.
* Retrieval through codes: the query's own prefix holds its item
  (``prefix_hit``), how many items share it, and a beam search over the levels
  constrained to prefixes that exist (what the generative model's decoding
  does): does the beam's final set hold the item's codes?
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onevision.vrq.quantizer import VRQTokenizer


def codebook_usage(codes: np.ndarray, sizes: list[int]) -> list[dict[str, float]]:
    """Per level: CUR, perplexity, used and dead code counts."""
    out = []
    for level, k in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=k).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        out.append({
            "cur": float((counts > 0).mean()),
            "perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "used": int((counts > 0).sum()),
            "dead": int((counts == 0).sum()),
            "size": int(k),
        })
    return out


def collision_stats(codes: np.ndarray) -> dict[str, float]:
    """ICR (share of items alone on their code tuple) and the largest group size."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    per_item = counts[inverse.ravel()]
    return {"icr": float((per_item == 1).mean()), "max_items_per_sid": int(counts.max()), "distinct_sids": int(len(counts))}


def prefix_consistency(query_codes: np.ndarray, item_codes_of_query: np.ndarray, depth: int) -> float:
    """Share of queries whose first ``depth`` codes equal their item's."""
    if len(query_codes) == 0:
        return float("nan")
    return float((query_codes[:, :depth] == item_codes_of_query[:, :depth]).all(1).mean())


def reconstruction_error(tokenizer: VRQTokenizer, emb: np.ndarray) -> dict[str, float]:
    """Mean squared error of decode(encode(x)) and its share of the mean squared norm."""
    rec = tokenizer.decode(tokenizer.encode(emb))
    mse = float(((emb - rec) ** 2).sum(1).mean())
    return {"mse": mse, "relative": mse / float((emb**2).sum(1).mean())}


def round_trip_rate(tokenizer: VRQTokenizer, codes: np.ndarray) -> float:
    """Share of code tuples with encode(decode(codes)) == codes."""
    return float((tokenizer.encode(tokenizer.decode(codes)) == codes).all(1).mean())


def _prefix_keys(codes: np.ndarray, sizes: list[int], depth: int) -> np.ndarray:
    key = np.zeros(len(codes), np.int64)
    for level in range(depth):
        key = key * sizes[level] + codes[:, level]
    return key


def constrained_beam(tokenizer: VRQTokenizer, query_emb: np.ndarray, item_codes: np.ndarray, beam: int) -> np.ndarray:
    """Beam search over residual levels, only through prefixes some item has.

    Scores a path by the squared norm of the query's residual after it.
    Returns (Q, beam, L) codes (paths padded with -1 when fewer exist).
    """
    sizes = tokenizer.codebook_sizes
    n_levels = tokenizer.num_levels
    valid = [np.unique(_prefix_keys(item_codes, sizes, d + 1)) for d in range(n_levels)]
    q = len(query_emb)
    paths = np.zeros((q, 1, 0), np.int64)  # (Q, b, depth)
    resid = query_emb[:, None, :].astype(np.float32)  # (Q, b, D)
    alive = np.ones((q, 1), bool)
    for level, book in enumerate(tokenizer.codebooks):
        k = len(book)
        # (Q, b, K) squared residual norm after choosing each code
        dist = (resid**2).sum(-1)[..., None] - 2.0 * resid @ book.T + (book**2).sum(1)[None, None, :]
        parent_key = _prefix_keys(paths.reshape(-1, level), sizes, level).reshape(q, -1) if level else np.zeros((q, 1), np.int64)
        keys = parent_key[..., None] * k + np.arange(k)[None, None, :]  # (Q, b, K)
        ok = np.isin(keys, valid[level]) & alive[..., None]
        dist = np.where(ok, dist, np.inf).reshape(q, -1)  # (Q, b*K)
        width = min(beam, dist.shape[1])
        top = np.argsort(dist, axis=1, kind="stable")[:, :width]  # (Q, width)
        parent, code = np.divmod(top, k)
        alive = np.isfinite(np.take_along_axis(dist, top, 1))
        paths = np.concatenate([np.take_along_axis(paths, parent[..., None], 1), code[..., None]], axis=2)
        resid = np.take_along_axis(resid, parent[..., None], 1) - book[code]
    paths[~alive] = -1
    return paths


def code_retrieval(tokenizer: VRQTokenizer, item_codes: np.ndarray, query_emb: np.ndarray, query_owner: np.ndarray, beams: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Retrieval through codes for queries whose item is row ``query_owner`` of ``item_codes``."""
    if len(query_emb) == 0:
        return {}
    query_codes = tokenizer.encode(query_emb)
    target = item_codes[query_owner]  # (Q, L)
    out: dict[str, float] = {}
    sizes = tokenizer.codebook_sizes
    for depth in range(1, tokenizer.num_levels + 1):
        item_keys = _prefix_keys(item_codes, sizes, depth)
        uniq, counts = np.unique(item_keys, return_counts=True)
        qk = _prefix_keys(query_codes, sizes, depth)
        pos = np.clip(np.searchsorted(uniq, qk), 0, len(uniq) - 1)
        found = uniq[pos] == qk
        out[f"prefix{depth}_hit"] = prefix_consistency(query_codes, target, depth)
        out[f"prefix{depth}_candidates"] = float(np.where(found, counts[pos], 0).mean())
    for beam in beams:
        paths = constrained_beam(tokenizer, query_emb, item_codes, beam)  # (Q, b, L)
        out[f"beam{beam}_recall"] = float((paths == target[:, None, :]).all(2).any(1).mean())
    return out


def tokenizer_report(
    tokenizer: VRQTokenizer,
    item_emb: np.ndarray,
    *,
    query_emb: np.ndarray,
    query_owner: np.ndarray,
    catalog_emb: np.ndarray | None = None,
    catalog_owner: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every tokenizer metric for one tokenizer on one set of embeddings (flat dict)."""
    codes = tokenizer.encode(item_emb)
    out: dict[str, Any] = {}
    for level, usage in enumerate(codebook_usage(codes, tokenizer.codebook_sizes)):
        for key, value in usage.items():
            out[f"level{level}_{key}"] = value
    out["cur_min"] = min(out[f"level{lv}_cur"] for lv in range(tokenizer.num_levels))
    out.update(collision_stats(codes))
    query_codes = tokenizer.encode(query_emb)
    out["consistency_l1"] = prefix_consistency(query_codes, codes[query_owner], 1)
    if tokenizer.num_levels >= 2:
        out["consistency_l12"] = prefix_consistency(query_codes, codes[query_owner], 2)
    if catalog_emb is not None and len(catalog_emb):
        out["catalog_view_consistency_l1"] = prefix_consistency(tokenizer.encode(catalog_emb), codes[catalog_owner], 1)
    rec = reconstruction_error(tokenizer, item_emb)
    out["recon_mse"], out["recon_relative"] = rec["mse"], rec["relative"]
    out["round_trip"] = round_trip_rate(tokenizer, codes)
    out.update(code_retrieval(tokenizer, codes, query_emb, query_owner))
    return out
