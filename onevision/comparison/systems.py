"""The systems the evaluation compares: a registry of builders, one function each.

Adding a system is one function::

    @register_system("onevision")
    def build_onevision(ctx: SystemContext) -> Retriever | None:
        if not (ctx.root / "models/generative").exists():
            return None                      # artifacts absent: the row is skipped, not an error
        return OneVisionRetriever.load(ctx.root / "models/generative", encoder=ctx.encoder)

A builder returns a :class:`~onevision.retrieval.Retriever` (or a list of them,
e.g. a model and its ablation) or ``None`` when its artifacts do not exist.
:class:`SystemContext` loads what several systems share (the encoder, the
item embeddings, the tables) once and lazily. Rows appear in registration
order; ``evaluate.systems`` picks a subset by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from onevision import paths
from onevision.config import Config
from onevision.data.split import load_split
from onevision.retrieval import Retriever

log = logging.getLogger(__name__)

SystemBuilder = Callable[["SystemContext"], "Retriever | list[Retriever] | None"]
SYSTEMS: dict[str, SystemBuilder] = {}


def register_system(name: str) -> Callable[[SystemBuilder], SystemBuilder]:
    """Register a builder under ``name`` (the name of the row it adds, or of its group)."""

    def decorate(fn: SystemBuilder) -> SystemBuilder:
        if name in SYSTEMS and SYSTEMS[name] is not fn:
            raise ValueError(f"system {name!r} is already registered")
        SYSTEMS[name] = fn
        return fn

    return decorate


class SystemContext:
    """What builders share, loaded once on first use (``encoder`` may be injected: serving, tests)."""

    def __init__(self, cfg: Config, root: Path, encoder=None):
        self.cfg = cfg
        self.root = Path(root)
        if encoder is not None:
            self.__dict__["encoder"] = encoder  # fills the cached property

    @cached_property
    def encoder(self):
        # lazy: the system registry loads a system's package (torch) only when that system is built
        from onevision.encoder.api import ENCODER_DIR, ImageEncoder

        return ImageEncoder.load(self.root / ENCODER_DIR)

    @cached_property
    def item_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        # lazy: the system registry loads a system's package (torch) only when that system is built
        from onevision.encoder.api import load_item_embeddings

        return load_item_embeddings(self.root)

    @cached_property
    def items(self) -> pd.DataFrame:
        return pd.read_parquet(self.root / paths.VALIDATED / "items.parquet")

    @property
    def has_encoder(self) -> bool:
        # lazy: the system registry loads a system's package (torch) only when that system is built
        from onevision.encoder.api import ENCODER_DIR

        return "encoder" in self.__dict__ or self.has(ENCODER_DIR)

    def has(self, relative: str | Path) -> bool:
        return (self.root / relative).exists()


def build_systems(cfg: Config, root: Path, names: list[str] | None = None, encoder=None) -> list[Retriever]:
    """Every registered system whose artifacts exist under ``root`` (or the named subset), in registration order.

    ``names`` (default ``cfg.evaluate.systems``) may name builders or the rows they return.
    """
    names = names if names is not None else cfg.evaluate.systems
    ctx = SystemContext(cfg, root, encoder)
    systems: list[Retriever] = []
    seen: set[str] = set()
    for key, builder in SYSTEMS.items():
        if names is not None and key not in names and not _may_produce(key, names):
            continue
        built = builder(ctx)
        if built is None:
            log.info("system %s: artifacts missing, skipped", key)
            continue
        for system in built if isinstance(built, list) else [built]:
            seen.update((key, system.name))
            if names is None or system.name in names or key in names:
                systems.append(system)
    if names is not None and set(names) - seen:
        log.warning("evaluate.systems: %s not built (unknown, or artifacts missing); registered: %s",
                    sorted(set(names) - seen), list(SYSTEMS))
    return systems


def _may_produce(key: str, names: list[str]) -> bool:
    """Rows are named after their builder or start with its name (mca -> mca_no_ranker)."""
    return any(name.startswith(key) for name in names)


# --------------------------------------------------------------------------- the built-in systems


def _train_popularity(ctx: SystemContext) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, clicks + mca.order_weight x orders) over the TRAIN-split interactions."""

    item_ids = ctx.items["item_id"].to_numpy(np.int64)
    queries = pd.read_parquet(ctx.root / paths.VALIDATED / "queries.parquet", columns=["query_id", "user_id", "ts"])
    train = load_split(ctx.root / paths.SPLITS, queries, "train")
    acts = pd.read_parquet(ctx.root / paths.VALIDATED / "interactions.parquet")
    acts = acts[acts["query_id"].isin(train["query_id"])]
    weight = np.where(acts["action"].to_numpy() == "order", ctx.cfg.mca.order_weight, 1.0)
    pop = pd.Series(weight, index=acts["item_id"].to_numpy()).groupby(level=0).sum()
    return item_ids, pop.reindex(item_ids, fill_value=0.0).to_numpy(np.float64)


@register_system("mca")
def build_mca(ctx: SystemContext) -> list[Retriever] | None:
    """The MCA cascade (its LambdaMART ranker) and, as ablation rows, the same cascade with its pointwise ranker
    (``mca_pointwise``, MCA's ranker until 2026-12-07) and without a ranker (``mca_no_ranker``)."""
    # lazy: the system registry loads a system's package (faiss) only when that system is built
    from onevision.mca.cascade import MCACascade
    from onevision.mca.train import MCA_DIR

    if not (ctx.has_encoder and ctx.has(MCA_DIR / "mca.json")):
        return None
    m = ctx.cfg.mca
    cascade = MCACascade.load(ctx.root / MCA_DIR, ctx.encoder, nprobe=m.nprobe, ef_search=m.ef_search, use_gpu=m.use_gpu)
    return [cascade, *cascade.ablations(), cascade.without_ranker()]


@register_system("knn")
def build_knn(ctx: SystemContext) -> Retriever | None:
    # lazy: the system registry loads a system's package (faiss, torch) only when that system is built
    from onevision.comparison.references import KNNRetriever
    from onevision.encoder.api import ITEM_EMBEDDINGS

    if not (ctx.has_encoder and ctx.has(ITEM_EMBEDDINGS)):
        return None
    item_ids, item_emb = ctx.item_embeddings
    return KNNRetriever(ctx.encoder, item_ids, item_emb, use_gpu=ctx.cfg.mca.use_gpu)


@register_system("popularity")
def build_popularity(ctx: SystemContext) -> Retriever:
    # lazy: the system registry loads a system's package (faiss) only when that system is built
    from onevision.comparison.references import PopularityRetriever

    return PopularityRetriever(*_train_popularity(ctx))


@register_system("random")
def build_random(ctx: SystemContext) -> Retriever:
    # lazy: the system registry loads a system's package (faiss) only when that system is built
    from onevision.comparison.references import RandomRetriever

    return RandomRetriever(ctx.items["item_id"].to_numpy(np.int64), seed=ctx.cfg.seed)


@register_system("onevision")
def build_onevision(ctx: SystemContext) -> list[Retriever] | None:
    """OneVision (final stage, dpo); beside it ``onevision_pruned``, the same checkpoint decoding with the
    calibrated pruning config (when stage calibrate_pruning has written one); as ablation rows, the
    pretrain and sft checkpoints: those that exist."""
    # lazy: the system registry loads a system's package (torch) only when that system is built
    from onevision.generative.checkpoint import STAGE_NAMES, checkpoint_dir
    from onevision.generative.pruning import load_pruning
    from onevision.generative.retriever import OneVisionRetriever

    stages = [s for s in reversed(STAGE_NAMES) if (checkpoint_dir(ctx.root, s) / "config.json").exists()]
    if not stages:
        return None
    systems = [OneVisionRetriever.load(ctx.root, stage, encoder=ctx.encoder, cfg=ctx.cfg) for stage in stages]
    pruning = load_pruning(ctx.root)
    if pruning is not None and stages[0] == "dpo":
        systems.insert(1, systems[0].with_pruning(pruning, name="onevision_pruned"))
    final = systems[0]
    if final.model.cfg.geo_levels:
        # ablations of the geometric decoder: no decoder (residual geometry + the leaf head), and without the leaf
        # head: prior only, the decoder alone (its own trie-constrained generation), both mixed; these three without the
        # shopper's prefix term, which is neither geometry nor decoder
        mixed = 1.0 if not final.model.tied else (float(final.model.learned_weight) or 0.5)
        systems += [
            final.with_options("onevision_no_decoder", learned_weight=0.0),
            final.with_options("onevision_no_shopper_beam", shopper_weight=0.0),
            final.with_options("onevision_prior_only", learned_weight=0.0, use_leaf=False, shopper_weight=0.0),
            final.with_options("onevision_learned_only", geo_weight=0.0, use_leaf=False, shopper_weight=0.0),
            final.with_options("onevision_prior_learned", learned_weight=mixed, use_leaf=False, shopper_weight=0.0),
        ]
    return systems
