"""Training the aligned encoder on multi-view pairs (stage ``align_encoder``).

One epoch visits every training query once, paired with a catalog view of its
item (query view <-> item view), and every item once with two of its catalog
views (item view <-> item view). Every image gets a fresh random augmentation
(batched in torch: ``batch_augment.random_views``): a catalog-view anchor
becomes a synthetic shopper photo (strength ``encoder.online_augment``), real
shopper photos and the catalog-side positives a mild one, so the encoder sees
many more photos of each product than the catalog and the query log hold,
shaped like the task (shopper photo -> catalog photo).

Batches are built from single-category blocks of ``batch_size //
categories_per_batch`` pairs, so most in-batch negatives share the anchor's
category: those are the hard negatives (a T-shirt against other T-shirts, not
against sneakers). Rows showing the same item twice are masked out of the
negatives.

After each epoch a retrieval probe embeds every catalog view, fuses them into
item embeddings and searches the VAL queries against them by exact kNN
(cosine): ``probe_top1`` is the share of queries whose nearest item is the
photographed one.

Under torchrun (``distributed.nproc_per_node`` > 1, onevision.distributed)
every process draws the same global batch and its augmentations, embeds its
contiguous share, gathers the others' embeddings and computes the global loss;
batch norm uses the global batch's statistics. The result is the
single-process one up to float summation order; only rank 0 runs the probe.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from onevision import distributed
from onevision.config import EncoderConfig
from onevision.encoder.api import ImageEncoder, fuse_views
from onevision.encoder.batch_augment import random_views
from onevision.encoder.losses import align_loss
from onevision.encoder.model import EncoderNet, EncoderSpec, absorbed_biases, default_lite0_weights
from onevision.reproducible import deterministic_torch

log = logging.getLogger(__name__)

Objective = Literal["align", "category"]
# strength of the extra augmentation on real shopper photos and catalog-side positives, relative to online_augment
MILD_AUGMENT = 0.35


@dataclass
class AlignData:
    """Decoded images and their owners (row indices into ``item_ids``)."""

    item_ids: np.ndarray  # (I,) int64
    categories: np.ndarray  # (I,) int64
    view_images: np.ndarray  # (V, H, W[, 3]) uint8: catalog views
    view_owner: np.ndarray  # (V,) int64 rows of item_ids
    train_images: np.ndarray  # (Q, H, W[, 3]) uint8: TRAIN-split query photos
    train_owner: np.ndarray  # (Q,)
    val_images: np.ndarray  # (Qv, H, W[, 3]) uint8: VAL-split query photos (probe only)
    val_owner: np.ndarray  # (Qv,)
    view_ids: np.ndarray | None = None  # (V,) view_id of each catalog view (for the written embeddings)
    train_ids: np.ndarray | None = None  # (Q,) query_id
    val_ids: np.ndarray | None = None  # (Qv,) query_id

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def _generator(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0xA11E, stream]))


def _views_by_item(owner: np.ndarray, n_items: int) -> list[np.ndarray]:
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(n_items + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n_items)]


def epoch_pairs(data: AlignData, rng: np.random.Generator, include_queries: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of pairs: (anchor_source, positive_view, owner).

    ``anchor_source`` >= 0 is a catalog view row, < 0 is ``-(1 + train query row)``.
    """
    views_of = _views_by_item(data.view_owner, data.n_items)
    anchors, positives, owners = [], [], []
    if include_queries and len(data.train_owner):
        for q, item in enumerate(data.train_owner):
            anchors.append(-(1 + q))
            positives.append(rng.choice(views_of[item]))
            owners.append(item)
    for item, views in enumerate(views_of):
        a, p = (rng.choice(views, 2, replace=False) if len(views) > 1 else (views[0], views[0]))
        anchors.append(a)
        positives.append(p)
        owners.append(item)
    return np.asarray(anchors, np.int64), np.asarray(positives, np.int64), np.asarray(owners, np.int64)


def category_batches(owner: np.ndarray, categories: np.ndarray, batch_size: int, categories_per_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split pair indices into batches made of single-category blocks (hard in-batch negatives)."""
    n = len(owner)
    if categories_per_batch <= 0:
        perm = rng.permutation(n)
        return [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    block = max(2, batch_size // categories_per_batch)
    order = np.lexsort((rng.random(n), categories[owner]))  # by category, random within
    blocks = [order[i : i + block] for i in range(0, n, block)]
    blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    return [np.concatenate(blocks[i : i + categories_per_batch]) for i in range(0, len(blocks), categories_per_batch)]


def build_encoder_net(cfg: EncoderConfig, image_size: int, channels: int) -> EncoderNet:
    spec = EncoderSpec(
        backbone=cfg.backbone,
        channels=channels if cfg.backbone == "small_cnn" else 3,
        image_size=cfg.input_size or image_size,
        embed_dim=cfg.embed_dim,
        width=cfg.width,
        hidden_dim=cfg.hidden_dim,
        token_grid=cfg.token_grid,
    )
    weights = None
    if cfg.backbone == "efficientnet_lite0":
        weights = cfg.weights_path or default_lite0_weights()
    return EncoderNet(spec, weights_path=weights)


def item_embeddings(encoder: ImageEncoder, data: AlignData, fusion: str, batch_size: int = 512) -> np.ndarray:
    """Fused item embeddings (I, D) from all catalog views."""
    return fuse_views(encoder.embed(data.view_images, batch_size), data.view_owner, data.n_items, fusion)


def retrieval_probe(item_emb: np.ndarray, query_emb: np.ndarray, query_owner: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Exact kNN (cosine) of queries against items: share whose item is in the top k."""
    if len(query_emb) == 0:
        return {f"top{k}": float("nan") for k in ks}
    sims = query_emb @ item_emb.T  # (Q, I)
    target = sims[np.arange(len(sims)), query_owner][:, None]
    rank = (sims > target).sum(1)  # 0 = the item is the nearest (ties count in its favour)
    return {f"top{k}": float((rank < k).mean()) for k in ks}


def train_encoder(
    data: AlignData,
    cfg: EncoderConfig,
    *,
    seed: int,
    image_size: int,
    channels: int,
    objective: Objective = "align",
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    probe_untrained: bool = True,
) -> tuple[ImageEncoder, list[dict]]:
    """Train an encoder; returns it and the per-epoch history.

    ``objective="align"`` is L_align = λ1·InfoNCE + λ2·circle on multi-view
    pairs. ``"category"`` trains the same network as a category classifier
    (cross-entropy through a linear head on the embedding) on the same
    images: the un-aligned backbone of the ablation, which knows what kind of
    product it sees but was never asked to tell two products apart. With
    ``probe_untrained`` the history starts with an epoch-0 row: the probe of
    the randomly initialised network.
    """
    deterministic_torch()
    world = distributed.world()
    if cfg.threads > 0 or world.parallel:  # the cores are shared by the data-parallel processes
        torch.set_num_threads(max(1, (cfg.threads or torch.get_num_threads()) // world.size))
    torch.manual_seed(int(np.random.SeedSequence([seed, 0xE4C]).generate_state(1)[0]))
    net = build_encoder_net(cfg, image_size, channels)
    for bias in absorbed_biases(net):  # no effect under the batch norm that follows: kept fixed, not random-walked
        bias.requires_grad_(False)
    model = distributed.wrap(net, world)
    n_cat = int(data.categories.max()) + 1
    # the head sees the gathered global batch on every rank: its gradient is whole there, no averaging needed
    classifier = torch.nn.Linear(cfg.embed_dim, n_cat) if objective == "category" else None
    params = [p for p in net.parameters() if p.requires_grad] + (list(classifier.parameters()) if classifier is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = _generator(seed, 1)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))  # augmentation draws
    pair_count = (len(data.train_owner) if cfg.use_queries else 0) + data.n_items
    steps_per_epoch = math.ceil(pair_count / cfg.batch_size)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps + cfg.epochs, pct_start=0.15)
    encoder = ImageEncoder(net, fusion=cfg.fusion)
    history: list[dict] = []

    def run_probe() -> dict[str, float]:
        if not world.is_main:  # only rank 0 reports; the others' weights are the same
            return {"top1": float("nan"), "top10": float("nan")}
        return retrieval_probe(item_embeddings(encoder, data, cfg.fusion), encoder.embed(data.val_images), data.val_owner)

    if probe_untrained:
        # epoch 0: the randomly initialised network, the floor the alignment has to lift
        t0 = time.perf_counter()
        probe = run_probe()
        history.append({"epoch": 0, "probe_top1": probe["top1"], "probe_top10": probe["top10"], "seconds": round(time.perf_counter() - t0, 3)})
    with distributed.global_batch_norm(net, world):
        _train_epochs(
            data, cfg, model=model, net=net, classifier=classifier, opt=opt, sched=sched, rng=rng, gen=gen, objective=objective,
            world=world, history=history, run_probe=run_probe, on_epoch=on_epoch, progress=progress,
        )
    return encoder, history


def _train_epochs(data, cfg, *, model, net, classifier, opt, sched, rng, gen, objective, world, history, run_probe, on_epoch, progress) -> None:
    """The epochs of :func:`train_encoder` (``model``: ``net``, under DDP when data-parallel); appends to ``history``."""
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        anchors, positives, owners = epoch_pairs(data, rng, include_queries=cfg.use_queries)
        batches = category_batches(owners, data.categories, cfg.batch_size, cfg.categories_per_batch, rng)
        sums = {"loss": 0.0, "infonce": 0.0, "circle": 0.0}
        for idx in tqdm(batches, desc=f"align epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False):
            a_src, p_src, own = anchors[idx], positives[idx], owners[idx]
            p_img = data.view_images[p_src]
            a_img = np.empty_like(p_img)
            from_view = a_src >= 0
            a_img[from_view] = data.view_images[a_src[from_view]]
            a_img[~from_view] = data.train_images[-a_src[~from_view] - 1]
            x = net.to_unit(torch.from_numpy(np.concatenate([a_img, p_img])))  # (2B, C, S, S) in [0, 1]
            if cfg.online_augment > 0:
                # a catalog-view anchor becomes a synthetic shopper photo; real shopper photos and the
                # catalog-side positives get a mild one (they are already what they are)
                hard = torch.from_numpy(np.concatenate([from_view, np.zeros(len(p_img), bool)]))
                x = torch.where(hard[:, None, None, None], random_views(x, gen, cfg.online_augment), random_views(x, gen, MILD_AUGMENT * cfg.online_augment))
            x = net.normalize(x)
            b = len(idx)
            if world.parallel:  # this rank's share of the pairs; everyone's embeddings gathered back in order
                bounds = distributed.share_bounds(b, world)
                lo, hi = bounds[world.rank]
                local, _ = model(torch.cat([x[lo:hi], x[b + lo : b + hi]]))
                n = hi - lo
                emb = torch.cat([distributed.gather_rows(local[:n], bounds, world), distributed.gather_rows(local[n:], bounds, world)])
            else:
                emb, _ = model(x)  # (2B, D)
            if objective == "align":
                same = torch.from_numpy(own[:, None] == own[None, :])  # (B, B) same item: not a negative
                loss, parts = align_loss(emb[:b], emb[b:], same_item=same, lambda_infonce=cfg.lambda_infonce, lambda_circle=cfg.lambda_circle,
                                         temperature=cfg.temperature, circle_margin=cfg.circle_margin, circle_gamma=cfg.circle_gamma)
            else:
                target = torch.from_numpy(np.concatenate([data.categories[own]] * 2))
                loss = F.cross_entropy(classifier(emb), target)
                parts = {"infonce": 0.0, "circle": 0.0}
            opt.zero_grad(set_to_none=True)
            (loss * distributed.global_loss_scale(world) if world.parallel else loss).backward()
            if world.parallel and classifier is not None:  # not under DDP: its whole gradient was scaled, undo it
                for param in classifier.parameters():
                    param.grad /= distributed.global_loss_scale(world)
            opt.step()
            sched.step()
            sums["loss"] += float(loss.detach()) * b
            sums["infonce"] += parts["infonce"] * b
            sums["circle"] += parts["circle"] * b
        train_s = time.perf_counter() - t0
        net.eval()
        probe = run_probe()
        row = {"epoch": epoch, **{k: v / len(anchors) for k, v in sums.items()}, "probe_top1": probe["top1"], "probe_top10": probe["top10"],
               "lr": float(sched.get_last_lr()[0]), "seconds": round(time.perf_counter() - t0, 3), "train_seconds": round(train_s, 3)}
        history.append(row)
        log.info("%s epoch %d: loss %.4f  probe top1 %.3f top10 %.3f  (%.1f s)", objective, epoch, row["loss"], row["probe_top1"], row["probe_top10"], row["seconds"])
        if on_epoch is not None:
            on_epoch(row)
