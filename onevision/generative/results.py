"""What a beam search returns (onevision.generative.decode, .pruning, .geosearch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BeamSearchResult:
    """Top-k generations per query, best first.

    sids:     (B, k, L) long   generated SIDs; -1 rows pad when fewer than k candidates exist
    scores:   (B, k) float     log p(SID | context); -inf where padded
    item_ids: (B, k) long      catalog item of each SID; -1 for padding and for SIDs no item has
    dead_prefixes: share of the final beam's prefixes that continue no catalog SID, where the search generates
                   prefixes and expands only the live ones (the unconstrained geometric search); None otherwise
    prefix_scores: (B, k) float the prefix's log p without the shopper term (what the leaf head reads; the geometric
                   search with a shopper term, else None: equal to ``scores`` before the leaf head)
    """

    sids: torch.Tensor
    scores: torch.Tensor
    item_ids: torch.Tensor
    dead_prefixes: float | None = None
    prefix_scores: torch.Tensor | None = None

    @property
    def invalid_rate(self) -> float:
        """Share of generated (non-padding) SIDs that name no catalog item (of generated prefixes, where the search
        reports ``dead_prefixes``)."""
        if self.dead_prefixes is not None:
            return self.dead_prefixes
        generated = torch.isfinite(self.scores)
        n = int(generated.sum())
        return float(((self.item_ids < 0) & generated).sum()) / n if n else 0.0
