"""Training the VRQ codebooks: RQ-KMeans initialisation, multi-view alignment of the shallow levels.

1. **Initialisation** (plain RQ-KMeans): level l's codebook is k-means (faiss)
   over the item embeddings' level-l residuals. With ``category_level1`` the
   level-1 codes are split among categories in proportion to their items and
   k-means runs within each category, so the first code also says "what kind
   of product".
2. **Vision alignment** (the VRQ part) of the shallow levels
   (``l < consistency_levels``): their codebooks are fine-tuned with Adam on
   the item embeddings and the embeddings of the items' views (catalog photos
   and TRAIN-split shopper photos):

   * reconstruction: ``Σ_l ||r_l(item) - C_l[k_l(item)]||²`` (what RQ-KMeans
     minimises), which keeps every code on its items;
   * multi-view consistency: for each view v of item i, its residual under the
     item's codes, ``r_l(v) = v - Σ_{m<l} C_m[k_m(i)]``, must pick the item's
     code: cross entropy of ``softmax(-||r_l(v) - C_l||² / τ)`` against
     ``k_l(i)``: the item's code is pulled towards its straying views, the
     codes they stray to are pushed away. Its weight is kept small
     (``consistency_weight``): pushed too hard, codes drift off the data and
     deep levels lose uniqueness (ICR).

   Item codes are re-assigned (hard, greedy) at every step from the current
   codebooks. Codes no item uses are then re-seeded from the items worst
   reconstructed at that level (``reseed_dead_codes``).
3. **Deep levels** (``l >= consistency_levels``) only have to tell items apart:
   k-means again on the residuals the aligned levels leave.
4. **SID**: item codes from ``VRQTokenizer.encode`` plus the disambiguation
   level (``quantizer.disambiguate``).

Everything is seeded: same embeddings + config + seed -> same codebooks and SIDs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from onevision.config import VRQConfig
from onevision.vrq.quantizer import VRQTokenizer, nearest

log = logging.getLogger(__name__)


@dataclass
class VRQTrainingData:
    """Item embeddings and the views that must share their item's shallow codes."""

    item_emb: np.ndarray  # (I, D) fused catalog-view embeddings (what the SID encodes)
    view_emb: np.ndarray  # (V, D) catalog views + TRAIN query views
    view_owner: np.ndarray  # (V,) rows of item_emb
    categories: np.ndarray | None = None  # (I,) int64, for category_level1


@dataclass
class TrainLog:
    history: list[dict] = field(default_factory=list)
    dead_codes_reseeded: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _seed(seed: int, *stream: int) -> int:
    return int(np.random.SeedSequence([seed, 0x5EC, *stream]).generate_state(1)[0] % (2**31 - 1))


def kmeans(x: np.ndarray, k: int, *, iters: int, seed: int) -> np.ndarray:
    """k-means centroids (k, D) with faiss; k is capped at the number of distinct points."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise in stage logs
    # lazy: faiss only for k-means; the tokenizer loads and encodes without it
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if k >= len(x):
        # fewer points than codes: every point is a code; pad with jittered copies so the size holds
        rng = np.random.default_rng(seed)
        extra = x[rng.integers(0, len(x), k - len(x))] + 1e-3 * rng.standard_normal((k - len(x), x.shape[1])).astype(np.float32)
        return np.concatenate([x, extra]).astype(np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, verbose=False, min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).copy()


def rq_kmeans(item_emb: np.ndarray, sizes: list[int], *, iters: int, seed: int, categories: np.ndarray | None = None) -> VRQTokenizer:
    """Plain residual k-means codebooks (the baseline and VRQ's initialisation)."""
    books: list[np.ndarray] = []
    r = np.asarray(item_emb, np.float32).copy()
    for level, k in enumerate(sizes):
        if level == 0 and categories is not None:
            book = _category_codebook(r, categories, k, iters=iters, seed=_seed(seed, level))
        else:
            book = kmeans(r, k, iters=iters, seed=_seed(seed, level))
        books.append(book)
        r -= book[nearest(r, book)]
    return VRQTokenizer(books)


def _category_codebook(x: np.ndarray, categories: np.ndarray, k: int, *, iters: int, seed: int) -> np.ndarray:
    """Level-1 codes split among categories in proportion to their items (at least one each)."""
    cats, counts = np.unique(categories, return_counts=True)
    if k < len(cats):
        raise ValueError(f"vrq.category_level1 needs codebook_sizes[0] >= number of categories ({len(cats)}), got {k}")
    share = np.maximum(1, np.floor(counts / counts.sum() * k).astype(int))
    while share.sum() > k:  # rounding up the small ones may overshoot: take from the largest
        share[share.argmax()] -= 1
    share[np.argsort(-counts, kind="stable")[: k - share.sum()]] += 1
    return np.concatenate([kmeans(x[categories == c], int(n), iters=iters, seed=seed + i) for i, (c, n) in enumerate(zip(cats, share, strict=True))])


def _sq_dist(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N, K) squared L2 distances (cdist's backward is slow on CPU)."""
    return (x * x).sum(1, keepdim=True) - 2.0 * x @ book.T + (book * book).sum(1)[None, :]


def _greedy_codes(x: torch.Tensor, books: list[torch.Tensor]) -> torch.Tensor:
    """(N, D) -> (N, L) hard greedy codes under the current codebooks (no grad)."""
    with torch.no_grad():
        r = x.clone()
        codes = []
        for book in books:
            k = _sq_dist(r, book).argmin(1)  # (N,)
            codes.append(k)
            r = r - book[k]
        return torch.stack(codes, 1)  # (N, L)


def finetune(tokenizer: VRQTokenizer, data: VRQTrainingData, cfg: VRQConfig, *, seed: int, progress_log: bool = True) -> TrainLog:
    """Vision-align the shallow codebooks (levels < consistency_levels) in place; returns the per-epoch log."""
    t0 = time.perf_counter()
    out = TrainLog()
    n_shallow = cfg.consistency_levels
    if n_shallow > tokenizer.num_levels:
        raise ValueError(f"vrq.consistency_levels={n_shallow} exceeds the {tokenizer.num_levels} levels of vrq.codebook_sizes")
    if cfg.epochs == 0:
        return out
    gen = torch.Generator().manual_seed(_seed(seed, 99))
    books = [torch.nn.Parameter(torch.from_numpy(b.copy())) for b in tokenizer.codebooks[:n_shallow]]
    opt = torch.optim.Adam(books, lr=cfg.lr)
    items = torch.from_numpy(np.asarray(data.item_emb, np.float32))
    views = torch.from_numpy(np.asarray(data.view_emb, np.float32))
    owner = torch.from_numpy(np.asarray(data.view_owner, np.int64))
    n_items, n_views = len(items), len(views)
    steps = max(1, -(-n_views // cfg.batch_size))  # a step: a batch of views and as many items
    for epoch in range(1, cfg.epochs + 1):
        view_perm = torch.randperm(n_views, generator=gen)
        item_perm = torch.randperm(n_items, generator=gen)
        sums = {"recon": 0.0, "consistency": 0.0, "view_agree_l1": 0.0}
        for step in range(steps):
            v_idx = view_perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]  # (B,)
            i_idx = item_perm[(step * cfg.batch_size) % n_items :][: cfg.batch_size]  # (B',)
            # reconstruction of items by the shallow levels (what RQ-KMeans minimises there)
            x = items[i_idx]  # (B', D)
            codes = _greedy_codes(x, books)  # (B', C)
            recon = x.new_zeros(())
            r = x
            for level, book in enumerate(books):
                q = book[codes[:, level]]  # (B', D)
                recon = recon + ((r - q) ** 2).sum(1).mean()
                r = r - q
            # consistency of views: their residuals under the item's codes must pick the item's code
            v = views[v_idx]  # (B, D)
            item_codes = _greedy_codes(items[owner[v_idx]], books)  # (B, C)
            cons = v.new_zeros(())
            r = v
            for level, book in enumerate(books):
                logits = -_sq_dist(r, book) / cfg.temperature  # (B, K_l)
                cons = cons + F.cross_entropy(logits, item_codes[:, level])
                if level == 0:
                    sums["view_agree_l1"] += float((logits.argmax(1) == item_codes[:, 0]).float().mean()) * len(v_idx)
                r = r - book[item_codes[:, level]]
            loss = recon + cfg.consistency_weight * cons
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["recon"] += float(recon.detach()) * len(v_idx)
            sums["consistency"] += float(cons.detach()) * len(v_idx)
        row = {"epoch": epoch, **{k: v / n_views for k, v in sums.items()}}
        out.history.append(row)
        if progress_log and (epoch == 1 or epoch == cfg.epochs or epoch % 10 == 0):
            log.info("vrq epoch %d: recon %.4f  consistency %.4f  view agreement l1 %.3f", epoch, row["recon"], row["consistency"], row["view_agree_l1"])
    tokenizer.codebooks[:n_shallow] = [b.detach().numpy().astype(np.float32).copy() for b in books]
    out.seconds = time.perf_counter() - t0
    return out


def refit_deep_levels(tokenizer: VRQTokenizer, item_emb: np.ndarray, first: int, *, iters: int, seed: int) -> None:
    """Re-run k-means for levels >= first on the residuals the (aligned) levels above leave."""
    codes = tokenizer.encode(item_emb)
    r = tokenizer.residuals(item_emb, codes)[:, first] if first < tokenizer.num_levels else None
    for level in range(first, tokenizer.num_levels):
        book = kmeans(r, len(tokenizer.codebooks[level]), iters=iters, seed=_seed(seed, level, 1))
        tokenizer.codebooks[level] = book
        r = r - book[nearest(r, book)]


def reseed_dead_codes(tokenizer: VRQTokenizer, item_emb: np.ndarray, *, seed: int, levels: int | None = None) -> list[int]:
    """Move codes that no item uses onto the items worst reconstructed at that level.

    Goes level by level (a re-seeded level changes the residuals below it);
    returns how many codes were re-seeded per level.
    """
    rng = np.random.default_rng(_seed(seed, 7))
    reseeded = []
    for level, book in enumerate(tokenizer.codebooks):
        if levels is not None and level >= levels:
            reseeded.append(0)
            continue
        codes = tokenizer.encode(item_emb)
        resid = tokenizer.residuals(item_emb, codes)[:, level]  # (I, D)
        used = np.bincount(codes[:, level], minlength=len(book))
        dead = np.flatnonzero(used == 0)
        if len(dead) and len(item_emb) > len(book):
            err = ((resid - book[codes[:, level]]) ** 2).sum(1)  # (I,)
            worst = np.argsort(-err, kind="stable")[: len(dead)]
            # a tiny jitter keeps two re-seeded codes from sitting on one point
            book[dead] = resid[worst] + 1e-4 * rng.standard_normal((len(dead), book.shape[1])).astype(np.float32)
        reseeded.append(int(len(dead)))
    return reseeded


def train_vrq(data: VRQTrainingData, cfg: VRQConfig, *, seed: int) -> tuple[VRQTokenizer, VRQTokenizer, TrainLog]:
    """RQ-KMeans init -> vision-aligned fine-tuning -> dead-code re-seeding.

    Returns (VRQ tokenizer, the plain RQ-KMeans tokenizer it started from, log).
    """
    cats = data.categories if cfg.category_level1 else None
    t0 = time.perf_counter()
    baseline = rq_kmeans(data.item_emb, list(cfg.codebook_sizes), iters=cfg.kmeans_iters, seed=seed, categories=cats)
    tokenizer = VRQTokenizer([b.copy() for b in baseline.codebooks])
    train_log = finetune(tokenizer, data, cfg, seed=seed)
    if cfg.reseed_dead_codes:
        train_log.dead_codes_reseeded = reseed_dead_codes(tokenizer, data.item_emb, seed=seed, levels=cfg.consistency_levels)
    if cfg.epochs > 0:
        # the deep levels only have to tell items apart: k-means on what the aligned levels leave
        refit_deep_levels(tokenizer, data.item_emb, cfg.consistency_levels, iters=cfg.kmeans_iters, seed=seed)
    if cfg.reseed_dead_codes:
        train_log.dead_codes_reseeded = [
            a + b for a, b in zip(train_log.dead_codes_reseeded, reseed_dead_codes(tokenizer, data.item_emb, seed=seed + 1), strict=True)
        ]
    train_log.seconds = time.perf_counter() - t0
    tokenizer.meta = {"seed": seed, "config": cfg.model_dump(mode="json"), "dead_codes_reseeded": train_log.dead_codes_reseeded}
    return tokenizer, baseline, train_log
