"""The demo shop's logging policy: the incumbent search system whose shown lists the search log records.

:func:`logging_policy` stands in for the production system that was live when
the log was written: pixel-PCA nearest neighbours of the query photo, an
imperfect re-ranking, recognition of the photographed product that fades
with the photo's difficulty (:func:`photo_difficulty`), and promoted
bestsellers in a few slots. Its features are pooled grey pixels
(:func:`policy_features`), computed while the demo renders its photos.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from onevision.config import Config
from onevision.data.augment import derive_rng

POLICY_GRID = 14  # images are pooled to 14x14 grey before PCA: tolerant to small shifts
POLICY_DIMS = 32  # pixel-PCA dimensions
POLICY_RECALL_FACTOR = 3  # recall K * this nearest items, then re-rank with noise
POLICY_NOISE = 0.6  # std of the re-ranking noise, in units of the candidates' distance spread
POLICY_POPULAR_SHARE = 0.1  # share of slots given to popular items
# The incumbent's trained encoder recognises the exact product far better than pixel PCA, and the
# better the easier the photo: P(recognised) = clip(1 - d / POLICY_RECOGNITION_SCALE, .05, .95), d the
# mean abs difference of the pooled query photo and the clean article (median d ~0.16 at strength 1).
POLICY_RECOGNITION_SCALE = 0.45
POLICY_RECOGNISED_Z = -1.5  # ranking score of a recognised product (candidates are z-scored distances)
CHUNK = 2048  # queries per batch: the policy's random draws follow the batches, so it is part of the seeded result


def policy_features(batch: np.ndarray) -> np.ndarray:
    """(B, S, S[, 3]) uint8 -> (B, POLICY_GRID**2) float32 grey features of the logging policy."""
    x = batch.astype(np.float32)
    if x.ndim == 4:
        x = x.mean(axis=-1)
    b, s = x.shape[0], x.shape[1]
    if s % POLICY_GRID == 0:
        f = s // POLICY_GRID
        x = x.reshape(b, POLICY_GRID, f, POLICY_GRID, f).mean(axis=(2, 4))
    else:
        x = np.stack([np.asarray(Image.fromarray(a).resize((POLICY_GRID, POLICY_GRID), Image.Resampling.BILINEAR)) for a in x])
    return (x.reshape(b, -1) / 255.0).astype(np.float32)


def photo_difficulty(query_features: np.ndarray, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mean abs difference between each pooled query photo and its pooled clean article, 0..1: ``(Q,)``."""
    out = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), CHUNK):
        sl = slice(start, start + CHUNK)
        out[sl] = np.abs(query_features[sl] - policy_features(sources[targets[sl]])).mean(axis=1)
    return out


def _pca(item_features: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top principal axes ``(D, dims)`` of the item features (eigh: deterministic)."""
    mean = item_features.mean(axis=0, dtype=np.float64)
    x = item_features.astype(np.float64) - mean
    cov = x.T @ x / max(len(x) - 1, 1)
    _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
    axes = vectors[:, ::-1][:, :dims]
    return mean.astype(np.float32), np.ascontiguousarray(axes, dtype=np.float32)


def logging_policy(
    cfg: Config,
    item_features: np.ndarray,
    *,
    query_features: np.ndarray,
    targets: np.ndarray,
    difficulty: np.ndarray,
    popularity: np.ndarray,
    progress: bool,
) -> np.ndarray:
    """The incumbent's shown lists ``(Q, K)`` of item row indices (= item ids in the demo).

    Recall: the ``K * POLICY_RECALL_FACTOR`` items nearest to the query photo
    in pixel-PCA space; besides, the incumbent *recognises* the photographed
    product (``targets``) with a probability falling with the photo's
    ``difficulty`` (see ``POLICY_RECOGNITION_SCALE``) and then puts it among
    the candidates with a good score. Ranking: distance z-scored within the
    candidates plus gaussian noise (the incumbent's imperfect ranker). Then
    ``POLICY_POPULAR_SHARE`` of the slots, at random positions, go to items
    drawn by popularity (promoted bestsellers), never duplicating a shown item.
    """
    n_items, k = len(item_features), min(cfg.data.impressions_per_query, len(item_features))
    n_pop = min(k - 1, max(1, round(k * POLICY_POPULAR_SHARE))) if k > 1 else 0
    n_ranked = k - n_pop
    m = min(n_items, max(n_ranked * POLICY_RECALL_FACTOR, n_ranked))
    mean, axes = _pca(item_features, min(POLICY_DIMS, item_features.shape[1]))
    items_z = (item_features - mean) @ axes  # (N, P)
    items_sq = (items_z * items_z).sum(axis=1)  # (N,)
    items_z_m2 = -2.0 * items_z  # (N, P)
    rng = derive_rng(cfg.seed, "policy")
    p_recognised = np.clip(1.0 - difficulty / POLICY_RECOGNITION_SCALE, 0.05, 0.95)
    recognised = derive_rng(cfg.seed, "policy-recognition").uniform(size=len(difficulty)) < p_recognised  # (Q,)
    shown = np.empty((len(query_features), k), dtype=np.int64)
    starts = range(0, len(query_features), CHUNK)
    for start in tqdm(starts, desc="logging policy", total=len(starts), disable=not progress, leave=False, unit="batch"):
        q = (query_features[start : start + CHUNK] - mean) @ axes  # (B, P)
        dist = q @ items_z_m2.T  # (B, N): ||i||^2 - 2 q.i; ||q||^2 dropped, it is the same for a row
        dist += items_sq[None, :]
        cand = np.argpartition(dist, m - 1, axis=1)[:, :m] if m < n_items else np.tile(np.arange(n_items), (len(q), 1))
        cd = np.take_along_axis(dist, cand, axis=1)  # (B, M)
        z = (cd - cd.mean(axis=1, keepdims=True)) / (cd.std(axis=1, keepdims=True) + 1e-6)
        # recognised products join the candidates (replacing the farthest one) with a good score
        t = targets[start : start + len(q)]
        rec = recognised[start : start + len(q)]
        is_t = cand == t[:, None]  # (B, M)
        missing = rec & ~is_t.any(axis=1)
        worst = np.argmax(cd, axis=1)
        cand[missing, worst[missing]] = t[missing]
        is_t[missing, worst[missing]] = True
        z = np.where(is_t & rec[:, None], np.minimum(z, POLICY_RECOGNISED_Z), z)
        noisy = z + POLICY_NOISE * rng.standard_normal(z.shape)
        ranked = np.take_along_axis(cand, np.argsort(noisy, axis=1, kind="stable")[:, :n_ranked], axis=1)  # (B, R)
        if n_pop:
            pops = rng.choice(n_items, size=(len(q), n_pop + 8), p=popularity)  # spare draws for duplicates
            slots = np.argsort(rng.uniform(size=(len(q), k)), axis=1)[:, :n_pop]  # (B, n_pop) popular positions
            is_pop = np.zeros((len(q), k), dtype=bool)
            np.put_along_axis(is_pop, slots, True, axis=1)
            rows = np.empty((len(q), k), dtype=np.int64)
            rows[~is_pop] = ranked.reshape(-1)
            for b in range(len(q)):
                taken = set(ranked[b].tolist())
                extra = [int(i) for i in dict.fromkeys(pops[b].tolist()) if i not in taken][:n_pop]
                fill = iter(rng.permutation(n_items).tolist()) if len(extra) < n_pop else iter(())
                while len(extra) < n_pop:  # tiny catalogs only
                    i = next(fill)
                    if i not in taken and i not in extra:
                        extra.append(i)
                rows[b, is_pop[b]] = extra
            ranked = rows
        shown[start : start + len(q)] = ranked
    return shown
