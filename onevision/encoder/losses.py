"""Alignment losses: L_align = λ1·InfoNCE + λ2·circle (OneVision, arXiv 2510.05759).

Both take a batch of B anchors and B positives (row i of each shows the same
item) as L2-normalised embeddings; every other row of the batch is a negative
(in-batch negatives; batches are built so many of them share the anchor's
category, the hard negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _negatives_mask(b: int, same_item: torch.Tensor | None, device) -> torch.Tensor:
    """(B, B) bool: True where column j is a negative for row i (j ≠ i and not the same item)."""
    neg = ~torch.eye(b, dtype=torch.bool, device=device)
    if same_item is not None:
        neg &= ~same_item.to(device)
    return neg


def info_nce(
    anchors: torch.Tensor, positives: torch.Tensor, temperature: float = 0.07, symmetric: bool = True, same_item: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE with in-batch negatives (CLIP-style; symmetric averages both directions).

    loss = mean_i -log( exp(s_ii/τ) / Σ_j exp(s_ij/τ) ),  s = anchors @ positivesᵀ;
    ``same_item`` (B, B) bool drops off-diagonal pairs of one item from the negatives.
    """
    logits = anchors @ positives.T / temperature  # (B, B)
    if same_item is not None:
        eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same_item.to(logits.device) & ~eye, float("-inf"))
    target = torch.arange(len(anchors), device=anchors.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


def circle_loss(
    anchors: torch.Tensor, positives: torch.Tensor, margin: float = 0.25, gamma: float = 64.0, same_item: torch.Tensor | None = None
) -> torch.Tensor:
    """Circle loss (Sun et al., CVPR 2020), pair-wise form over the batch similarity matrix.

    For anchor i, with s_p = s_ii and negatives s_n = s_ij (j ≠ i):
        α_p = [1 + m - s_p]₊,  α_n = [s_n + m]₊   (detached: they only weight the pairs)
        L_i = softplus( logsumexp_j(γ α_n (s_n - m)) + γ α_p (-(s_p - 1 + m)) )
    i.e. log(1 + Σ_n exp(γ α_n (s_n - Δ_n)) · exp(-γ α_p (s_p - Δ_p))), Δ_p = 1 - m, Δ_n = m.
    Returns the mean over anchors; ``same_item`` as in :func:`info_nce`.
    """
    sim = anchors @ positives.T  # (B, B)
    neg = _negatives_mask(len(sim), same_item, sim.device)  # (B, B)
    s_p = sim.diagonal()  # (B,)
    alpha_p = (1 + margin - s_p).clamp_min(0).detach()
    alpha_n = (sim + margin).clamp_min(0).detach()
    logit_p = -gamma * alpha_p * (s_p - (1 - margin))  # (B,)
    logit_n = (gamma * alpha_n * (sim - margin)).masked_fill(~neg, float("-inf"))  # (B, B): negatives only
    return F.softplus(torch.logsumexp(logit_n, dim=1) + logit_p).mean()


def align_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    *,
    lambda_infonce: float,
    lambda_circle: float,
    temperature: float,
    circle_margin: float,
    circle_gamma: float,
    same_item: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_align = λ1·InfoNCE + λ2·circle; also returns the parts for logging."""
    nce = info_nce(anchors, positives, temperature, same_item=same_item) if lambda_infonce > 0 else anchors.new_zeros(())
    circ = circle_loss(anchors, positives, circle_margin, circle_gamma, same_item=same_item) if lambda_circle > 0 else anchors.new_zeros(())
    total = lambda_infonce * nce + lambda_circle * circ
    return total, {"infonce": float(nce.detach()), "circle": float(circ.detach())}
