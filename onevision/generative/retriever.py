"""OneVision as a :class:`onevision.retrieval.Retriever`: image (+ user) -> generated catalog items.

One model stands where MCA has recall, pre-ranking and ranking: the aligned
encoder turns the query photo into visual tokens + a global embedding, the
user id becomes a user row and the user's most recent TRAIN-split
clicks/orders (stored with the checkpoint), and constrained beam search
generates the top-k SIDs, i.e. k distinct existing items. Unknown user ids
(and -1) get the anonymous context: user row 0 and an empty history. With a
``pruning`` config (onevision.generative.pruning; the calibrated one is in
``models/pruning/``) the search prunes dynamically; without one it is exact.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from onevision.encoder.api import ENCODER_DIR, ImageEncoder
from onevision.generative.checkpoint import Checkpoint, checkpoint_dir, load_checkpoint
from onevision.generative.data import history_table
from onevision.generative.decode import beam_search
from onevision.generative.geosearch import geometric_beam_search
from onevision.generative.inputs import load_sids
from onevision.generative.model import Context
from onevision.generative.pruning import PruningConfig
from onevision.generative.trie import SIDTrie
from onevision.retrieval import RetrievalResult


class OneVisionRetriever:
    """Encoder + SID trie + a stage checkpoint behind ``retrieve(images, user_ids, k)``."""

    def __init__(self, encoder, checkpoint: Checkpoint, *, trie: SIDTrie, beam_width: int = 20, batch_size: int = 256, name: str = "onevision",
                 pruning: PruningConfig | None = None):
        self.name = name
        self.pruning = pruning
        self._generated = self._invalid = 0  # SIDs retrieve() generated, and those naming no item (evaluation_metrics)
        self.search_options: dict = {}  # geometric-search options of an ablation row (with_options)
        self.encoder = encoder
        self.model = checkpoint.model.eval()
        self.checkpoint = checkpoint
        self.trie = trie
        self.beam_width = beam_width
        self.batch_size = batch_size
        if tuple(self.model.cfg.codebook_sizes) != tuple(trie.codebook_sizes):
            raise ValueError(f"checkpoint codebook sizes {self.model.cfg.codebook_sizes} differ from the SID table's {trie.codebook_sizes}")
        rows = checkpoint.user_rows(checkpoint.user_history["user_id"].to_numpy(np.int64))
        self.history, self.action = history_table(checkpoint.user_history, rows, len(checkpoint.user_ids) + 1, self.model.cfg.history_len, trie)

    @classmethod
    def load(
        cls, root: str | Path, stage: str = "dpo", *, encoder=None, beam_width: int | None = None, batch_size: int | None = None, name: str | None = None, cfg=None,
        pruning: PruningConfig | None = None,
    ) -> OneVisionRetriever:
        """From a project root: ``models/encoder`` (unless ``encoder`` is given), the SID table and ``models/generative/<stage>``.

        ``cfg`` (a Config) supplies beam width and batch size (generative.decode) unless given.
        The final stage (dpo) is named ``onevision``, the others ``onevision_<stage>``.
        ``pruning``: decode with this dynamic-pruning config (``load_pruning(root)`` reads the calibrated one).
        """

        root = Path(root)
        table, sizes = load_sids(root)
        checkpoint = load_checkpoint(checkpoint_dir(root, stage))
        # The checkpoint's heads fix the codebook sizes: use them for the trie (>= the table's max codes).
        trie = SIDTrie.from_sid_table(table, tuple(checkpoint.model.cfg.codebook_sizes))
        decode = cfg.generative.decode if cfg is not None else None
        return cls(
            encoder if encoder is not None else ImageEncoder.load(root / ENCODER_DIR),
            checkpoint,
            trie=trie,
            beam_width=beam_width or (decode.beam_width if decode else 20),
            batch_size=batch_size or (decode.batch_size if decode else 256),
            name=name or ("onevision" if stage == "dpo" else f"onevision_{stage}"),
            pruning=pruning,
        )

    def with_options(self, name: str, **options) -> OneVisionRetriever:
        """The same model decoding with geometric-search options (an ablation row): ``learned_weight``,
        ``geo_weight``, ``use_leaf`` (onevision.generative.geosearch.geometric_beam_search)."""
        other = self.with_pruning(None, name=name)
        other.search_options = dict(options)
        return other

    def with_pruning(self, pruning: PruningConfig | None, name: str | None = None) -> OneVisionRetriever:
        """The same model, trie and user histories (shared, not copied) decoding with ``pruning``."""
        other = copy.copy(self)
        other.pruning = pruning
        other.name = name or self.name
        other._generated = other._invalid = 0
        return other

    def context(self, images: np.ndarray, user_ids: np.ndarray) -> Context:
        """Encode images and look up users -> the model's context (Q rows)."""
        cfg = self.model.cfg
        opts = self.search_options
        learned = float(opts.get("learned_weight", self.model.learned_weight)) != 0.0 or opts.get("geo_weight", 1.0) == 0.0
        if cfg.geo_levels and not learned:
            # geometric decoding without the learned term reads only the aligned embedding: no visual tokens needed
            image = torch.from_numpy(self.encoder.embed(images))
            visual = torch.zeros(len(image), cfg.n_visual_tokens, cfg.token_dim)
        elif cfg.embed_dim > 0:
            emb, tokens = self.encoder.embed_and_tokens(images)
            image, visual = torch.from_numpy(emb), torch.from_numpy(tokens)  # (Q, E), (Q, T, D)
        else:
            image, visual = None, torch.from_numpy(self.encoder.visual_tokens(images))
        rows = torch.from_numpy(self.checkpoint.user_rows(np.asarray(user_ids, dtype=np.int64).reshape(-1)))  # (Q,)
        return Context(visual, image, rows, self.history[rows], self.action[rows])

    def retrieve(self, images: np.ndarray, user_ids: np.ndarray, k: int) -> RetrievalResult:
        """images: (Q, H, W) or (Q, H, W, 3) uint8; user_ids: (Q,) int64 (-1 or unknown: anonymous)."""
        Q = len(images)
        if len(np.asarray(user_ids).reshape(-1)) != Q:
            raise ValueError(f"{Q} images but {len(np.asarray(user_ids).reshape(-1))} user ids")
        item_ids = np.full((Q, k), -1, np.int64)
        scores = np.full((Q, k), -np.inf, np.float32)
        timings = {"encode": 0.0, "generate": 0.0}
        for start in range(0, Q, self.batch_size):
            sl = slice(start, min(Q, start + self.batch_size))
            t0 = time.perf_counter()
            ctx = self.context(images[sl], np.asarray(user_ids).reshape(-1)[sl])
            t1 = time.perf_counter()
            if self.search_options:
                res = geometric_beam_search(self.model, ctx, trie=self.trie, beam_width=max(self.beam_width, k), k=k, **self.search_options)
            else:
                res = beam_search(self.model, ctx, trie=self.trie, beam_width=self.beam_width, k=k, pruning=self.pruning)
            timings["encode"] += t1 - t0
            timings["generate"] += time.perf_counter() - t1
            item_ids[sl] = res.item_ids.numpy()
            scores[sl] = res.scores.numpy()
            generated = torch.isfinite(res.scores)  # padding (fewer candidates than k) is not a generation
            self._generated += int(generated.sum())
            self._invalid += int(((res.item_ids < 0) & generated).sum())
        return RetrievalResult(item_ids=item_ids, scores=scores, timings=timings)

    def evaluation_metrics(self) -> dict[str, float]:
        """Counted over every ``retrieve`` call so far (the evaluation's quality pass): generated SIDs and the
        share that names no catalog item. The trie makes it 0 by construction; the gate checks it is."""
        rate = self._invalid / self._generated if self._generated else 0.0
        return {"invalid_sid_rate": rate, "generated_sids": self._generated}
