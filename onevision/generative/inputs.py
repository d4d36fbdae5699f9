"""What the generative stages read, loaded and encoded once per stage: the SID table and trie, the query
sets of TRAIN and VAL with their model contexts (image bank rows, user rows, TRAIN histories), the logs.

Images are encoded once by the frozen aligned encoder into an ImageBank; VAL
queries are a seeded sample of ``generative.decode.probe_queries``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from onevision import paths
from onevision.config import Config
from onevision.data.split import ASSIGNMENT_FILE
from onevision.encoder.api import (
    ENCODER_DIR,
    ImageEncoder,
    decode_image_column,
)
from onevision.evaluation.metrics import pad_item_lists
from onevision.generative.data import (
    context_rows,
    histories_before,
    interaction_events,
)
from onevision.generative.train import (
    ContextRows,
    ImageBank,
)
from onevision.generative.trie import SIDTrie, sid_columns
from onevision.vrq.api import VRQ_DIR, VRQTokenizer, load_sid_table

log = logging.getLogger(__name__)


def load_sids(root: Path) -> tuple[pd.DataFrame, tuple[int, ...]]:
    """The SID table and per-level codebook sizes: the tokenizer's for its levels (when saved),
    max code + 1 for the disambiguation level (and wherever the tokenizer is absent)."""

    table = load_sid_table(root)
    cols = sid_columns(table)
    sizes = [int(table[c].max()) + 1 for c in cols]
    if (Path(root) / VRQ_DIR).exists():
        declared = [int(v) for v in VRQTokenizer.load(Path(root) / VRQ_DIR).codebook_sizes]
        for level, size in enumerate(declared[: len(sizes)]):
            sizes[level] = max(sizes[level], size)
    return table, tuple(sizes)


@dataclass
class QuerySet:
    """Queries of one split with their model contexts."""

    frame: pd.DataFrame  # query_id, user_id, item_id, ts (+ image columns dropped after encoding)
    rows: ContextRows

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, keep: np.ndarray) -> QuerySet:
        """The queries where ``keep`` (bool, one per query) holds."""
        keep = np.asarray(keep, bool)
        return QuerySet(self.frame[keep].reset_index(drop=True), self.rows.select(torch.from_numpy(np.flatnonzero(keep))))


def stacking_split(qs: QuerySet, decoder_share: float, seed: int) -> tuple[QuerySet, QuerySet]:
    """TRAIN queries split for stacking: (the decoder's, the leaf head's). The leaf head learns how far to trust the
    decoder's prefix scores; on queries the decoder trained on those scores are far more confident than on new
    photos (a tied decoder's TRAIN loss is about half its VAL loss), so a leaf head fitted there over-trusts them.
    Seeded and by query, the same in every stage; ``decoder_share`` 1 gives both parts every query (no split)."""
    if decoder_share >= 1.0 or len(qs) < 2:
        return qs, qs
    draw = np.random.default_rng([seed, 20261207]).random(len(qs))
    to_decoder = draw < decoder_share
    return qs.subset(to_decoder), qs.subset(~to_decoder)


@dataclass
class GenerativeData:
    """Everything the generative stages read, encoded once."""

    trie: SIDTrie
    bank: ImageBank
    user_ids: np.ndarray  # sorted; model row = index + 1
    views: pd.DataFrame  # item_id, bank_row
    train: QuerySet
    val: QuerySet
    events: pd.DataFrame  # TRAIN-split events (interaction_events)
    impressions: pd.DataFrame
    items: pd.DataFrame
    user_tastes: pd.DataFrame | None
    token_dim: int
    n_visual_tokens: int
    embed_dim: int
    val_clicked: np.ndarray | None = None  # (Qv, R) item ids the VAL shoppers clicked in the log, -1 padded
    val_ordered: np.ndarray | None = None  # (Qv, R') ordered


def _encode_images(encoder, frames: list[pd.DataFrame], cfg: Config, with_embedding: bool) -> tuple[ImageBank, list[np.ndarray]]:
    """Decode + encode the images of several frames into one bank (float16); returns each frame's bank rows."""

    visual, image, rows, start = [], [], [], 0
    for frame in frames:
        pixels = decode_image_column(frame, cfg.data.import_dir, cfg.data.image_channels)
        visual.append(torch.from_numpy(encoder.visual_tokens(pixels)).half())  # (n, T, D)
        if with_embedding:
            image.append(torch.from_numpy(encoder.embed(pixels)).half())  # (n, E)
        rows.append(np.arange(start, start + len(frame)))
        start += len(frame)
    return ImageBank(torch.cat(visual), torch.cat(image) if with_embedding else None), rows


def load_generative_data(cfg: Config, root: Path, *, catalog_views: bool) -> GenerativeData:
    """Read tables, split, SIDs and encoder; encode the images the stage needs; build user histories."""

    t0 = time.perf_counter()
    root = Path(root)
    g = cfg.generative
    validated = root / paths.VALIDATED
    sid_table, sizes = load_sids(root)
    trie = SIDTrie.from_sid_table(sid_table, sizes)
    items = pd.read_parquet(validated / "items.parquet")
    users = pd.read_parquet(validated / "users.parquet", columns=["user_id"])
    tastes_path = validated / "user_tastes.parquet"
    user_tastes = pd.read_parquet(tastes_path) if tastes_path.exists() else None
    queries = pd.read_parquet(validated / "queries.parquet")
    assignment = pd.read_parquet(root / paths.SPLITS / ASSIGNMENT_FILE, columns=["query_id", "split"])
    queries = queries.merge(assignment, on="query_id", how="inner", validate="one_to_one").sort_values("query_id", kind="stable")
    queries = queries[queries["item_id"].isin(sid_table["item_id"])]
    train_q = queries[queries["split"] == "train"].reset_index(drop=True)
    val_q = queries[queries["split"] == "val"].reset_index(drop=True)
    if g.decode.probe_queries and len(val_q) > g.decode.probe_queries:
        val_q = val_q.sample(g.decode.probe_queries, random_state=cfg.seed).sort_values("query_id", kind="stable").reset_index(drop=True)
    views = pd.read_parquet(validated / "views.parquet") if catalog_views else pd.DataFrame(columns=["item_id", "image", "image_path"])
    views = views[views["item_id"].isin(sid_table["item_id"])].reset_index(drop=True)

    encoder = ImageEncoder.load(root / ENCODER_DIR)
    use_emb = g.model.use_image_embedding
    bank, (view_rows, train_rows, val_rows) = _encode_images(encoder, [views, train_q, val_q], cfg, use_emb)
    log.info("encoded %d images (%d views, %d train, %d val queries) in %.1f s", len(bank), len(views), len(train_q), len(val_q), time.perf_counter() - t0)

    interactions = pd.read_parquet(validated / "interactions.parquet")
    events = interaction_events(interactions, train_q)  # TRAIN behaviour only
    user_ids = np.sort(users["user_id"].to_numpy(np.int64))

    def query_set(frame: pd.DataFrame, bank_rows: np.ndarray) -> QuerySet:
        u = frame["user_id"].to_numpy(np.int64)
        pos = np.clip(np.searchsorted(user_ids, u), 0, max(len(user_ids) - 1, 0))
        user_rows = np.where(user_ids[pos] == u, pos + 1, 0) if len(user_ids) else np.zeros(len(u), np.int64)
        hist_items, hist_actions = histories_before(events, u, frame["ts"].astype("int64").to_numpy(), g.model.history_len)
        rows = context_rows(bank_rows, user_rows, hist_items, hist_actions, trie)
        return QuerySet(frame.drop(columns=[c for c in ("image", "image_path") if c in frame.columns]), rows)

    impressions = pd.read_parquet(validated / "impressions.parquet")
    return GenerativeData(
        trie=trie,
        bank=bank,
        user_ids=user_ids,
        views=pd.DataFrame({"item_id": views["item_id"].to_numpy(np.int64), "bank_row": view_rows}),
        train=query_set(train_q, train_rows),
        val=query_set(val_q, val_rows),
        events=events,
        impressions=impressions[impressions["query_id"].isin(train_q["query_id"]) | impressions["query_id"].isin(val_q["query_id"])],
        items=items,
        user_tastes=user_tastes,
        token_dim=encoder.token_dim,
        n_visual_tokens=encoder.num_tokens,
        embed_dim=encoder.dim if use_emb else 0,
        val_clicked=_logged_items(interactions, val_q["query_id"].to_numpy(np.int64), "click"),
        val_ordered=_logged_items(interactions, val_q["query_id"].to_numpy(np.int64), "order"),
    )


def _logged_items(interactions: pd.DataFrame, query_ids: np.ndarray, action: str) -> np.ndarray:
    """(Q, R) item ids with ``action`` in each query's logged session, -1 padded (R >= 1)."""
    acts = interactions.loc[interactions["action"].astype(str) == action, ["query_id", "item_id"]].drop_duplicates()
    grouped = acts.groupby("query_id")["item_id"].apply(list)

    return pad_item_lists([grouped.get(q, []) for q in query_ids])


def user_rows_of(data: GenerativeData, user_ids: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(data.user_ids, user_ids), 0, max(len(data.user_ids) - 1, 0))
    return np.where(data.user_ids[pos] == user_ids, pos + 1, 0)


def val_events(root: Path, data: GenerativeData) -> pd.DataFrame:
    return interaction_events(pd.read_parquet(Path(root) / paths.VALIDATED / "interactions.parquet"), data.val.frame)
