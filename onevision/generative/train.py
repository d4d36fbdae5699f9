"""Training loops of the generative retriever, on tensors (no files, no stages).

* :func:`train_sid_model`: teacher-forced, weighted SID likelihood: the
  ``pretrain`` (visual prior: view -> its item's SID) and ``sft`` (query + user
  context -> clicked / ordered items' SIDs, order > click) stages.
* :func:`dpo_loss` / :func:`train_dpo`: Direct Preference Optimization
  (Rafailov et al. 2023, arXiv 2305.18290) against a frozen reference on pairs
  (chosen SID, rejected SID) of the same context.
* :func:`evaluate_preferences`, :func:`token_kl`: what the DPO stage reports.

Images are encoded once by the (frozen) aligned encoder into an
:class:`ImageBank`; examples point into it by row, so a query photo that is
the context of five examples is stored once.

Under torchrun both training loops are data-parallel (onevision.distributed):
every process draws the same global batch and its random context dropout,
trains on its share under DistributedDataParallel with the loss rescaled to
the share's part of the global mean, so the gradient is the global batch's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from onevision import distributed
from onevision.generative.model import ACTION_PAD, Context, SIDGenerator, cosine_lr, eval_mode, make_optimizer
from onevision.generative.nodes import node_geometry, trie_paths

log = logging.getLogger(__name__)


@dataclass
class ImageBank:
    """Encoded images: visual (N, T, token_dim) float, image (N, embed_dim) float or None."""

    visual: torch.Tensor
    image: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.visual.shape[0]


@dataclass
class ContextRows:
    """Per-example context: image row in the bank, user row, history SIDs (E, H, L), actions (E, H)."""

    image_idx: torch.Tensor  # (E,) long
    user: torch.Tensor  # (E,) long, 0 = anonymous
    history: torch.Tensor  # (E, H, L) long, -1 pads
    action: torch.Tensor  # (E, H) long, ACTION_PAD pads

    def __len__(self) -> int:
        return self.image_idx.shape[0]

    @classmethod
    def anonymous(cls, image_idx: torch.Tensor, history_len: int, n_levels: int) -> ContextRows:
        E = len(image_idx)
        return cls(
            image_idx=image_idx.long(),
            user=torch.zeros(E, dtype=torch.long),
            history=torch.full((E, history_len, n_levels), -1, dtype=torch.long),
            action=torch.full((E, history_len), ACTION_PAD, dtype=torch.long),
        )

    def select(self, idx: torch.Tensor) -> ContextRows:
        return ContextRows(self.image_idx[idx], self.user[idx], self.history[idx], self.action[idx])

    def context(self, bank: ImageBank, idx: torch.Tensor | None = None) -> Context:
        idx = torch.arange(len(self)) if idx is None else idx
        rows = self.image_idx[idx]
        return Context(
            visual=bank.visual[rows].float(),
            image=None if bank.image is None else bank.image[rows].float(),
            user=self.user[idx],
            history=self.history[idx],
            action=self.action[idx],
        )


def _cat(parts: list, cls):
    return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})


@dataclass
class SIDExamples:
    """Teacher-forcing examples: context -> target SID (E, L), weighted (E,)."""

    rows: ContextRows
    target: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def concat(parts: list[SIDExamples]) -> SIDExamples:
        return SIDExamples(_cat([p.rows for p in parts], ContextRows), torch.cat([p.target for p in parts]), torch.cat([p.weight for p in parts]))


@dataclass
class PreferencePairs:
    """DPO pairs: in context ``rows``, SID ``chosen`` (P, L) is preferred over ``rejected`` (P, L)."""

    rows: ContextRows
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)


def _anonymize(ctx: Context, prob: float, gen: torch.Generator) -> Context:
    """Context dropout: with probability ``prob`` a row loses its user and history (keeps row 0 meaningful)."""
    if prob <= 0 or ctx.user is None:
        return ctx
    drop = torch.rand(len(ctx), generator=gen) < prob  # (B,)
    user = ctx.user.masked_fill(drop, 0)
    history = ctx.history.masked_fill(drop[:, None, None], -1)
    action = ctx.action.masked_fill(drop[:, None], ACTION_PAD)
    return Context(ctx.visual, ctx.image, user, history, action)


def _batches(n: int, batch_size: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _masks(model: SIDGenerator, trie, targets: torch.Tensor) -> dict:
    """``forward``'s trie arguments for target SIDs: the valid children along each (the softmax of every trained
    level runs over them) and, with node geometry, the prefixes' nodes and the node table; nothing without a trie
    (an unconstrained softmax)."""
    if trie is None:
        return {}
    geom = node_geometry(model, trie)
    if geom is None:
        return {"allowed": trie.path_masks(targets, model.trained_levels)}
    children = trie_paths(trie, targets, model.trained_levels)
    return {"allowed": [c >= 0 for c in children], "children": children, "nodes": geom}


@torch.no_grad()
def mean_nll(model: SIDGenerator, bank: ImageBank, examples: SIDExamples, batch_size: int = 1024, trie=None) -> float:
    """Weighted mean SID negative log-likelihood (nats per SID) of ``examples`` (over the trie's children with ``trie``)."""
    total, weight = 0.0, 0.0
    with eval_mode(model):
        for idx in _batches(len(examples), batch_size, None):
            target = examples.target[idx]
            _, loss = model(examples.rows.context(bank, idx), target, weights=examples.weight[idx], **_masks(model, trie, target))
            w = float(examples.weight[idx].sum())
            total, weight = total + float(loss) * w, weight + w
    return total / max(weight, 1e-12)


def train_sid_model(
    model: SIDGenerator,
    bank: ImageBank,
    *,
    examples: SIDExamples,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.01,
    warmup_steps: int = 50,
    grad_clip: float = 1.0,
    anonymize_prob: float = 0.0,
    seed: int = 0,
    val: SIDExamples | None = None,
    on_epoch=None,
    trie=None,
) -> list[dict]:
    """Minimise the weighted SID NLL with AdamW + cosine schedule; returns one dict per epoch.

    ``trie`` (onevision.generative.trie.SIDTrie): each level's softmax runs over the catalog's valid children of
    the target's prefix, the normalisation constrained beam search decodes with (None: over every code).
    ``on_epoch(epoch, record)`` (optional) may add entries to the record (e.g. a retrieval probe).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, lr, weight_decay)
    world = distributed.world()
    net = distributed.wrap(model, world)
    steps_per_epoch = -(-len(examples) // batch_size)
    total, step, history = epochs * steps_per_epoch, 0, []
    for epoch in range(1, epochs + 1):
        model.train()
        t0, running, seen = time.perf_counter(), 0.0, 0.0
        for idx in _batches(len(examples), batch_size, gen):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, lr, min(warmup_steps, total // 10 + 1))
            ctx = _anonymize(examples.rows.context(bank, idx), anonymize_prob, gen)  # drawn for the global batch
            mine = distributed.shard(torch.arange(len(idx)), world)
            w = examples.weight[idx[mine]]
            target = examples.target[idx[mine]]
            _, loss = net(ctx.index(mine), target, weights=w, **_masks(model, trie, target))
            opt.zero_grad(set_to_none=True)
            (loss * distributed.share_scale(w.sum(), examples.weight[idx].sum(), world)).backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            step += 1
            running, seen = running + loss.item() * w.sum().item(), seen + w.sum().item()
        running, seen = distributed.all_sum([running, seen], world)
        record = {"epoch": epoch, "loss": running / max(seen, 1e-12), "seconds": time.perf_counter() - t0}
        if val is not None and len(val):
            record["val_loss"] = mean_nll(model, bank, val, trie=trie)
        if on_epoch is not None:
            on_epoch(epoch, record)
        log.info("epoch %d/%d: %s", epoch, epochs, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
        history.append(record)
    model.eval()
    return history


# --------------------------------------------------------------------------- DPO


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO loss on sequence log-probabilities (P,) each -> (loss (P,), chosen reward (P,), rejected reward (P,)).

    reward(y) = beta * (log pi(y|x) - log pi_ref(y|x));
    loss = -log sigmoid(reward(chosen) - reward(rejected)).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)  # (P,)
    rejected_reward = beta * (policy_rejected - ref_rejected)  # (P,)
    loss = -F.logsigmoid(chosen_reward - rejected_reward)  # (P,)
    return loss, chosen_reward.detach(), rejected_reward.detach()


class _PairScorer(torch.nn.Module):
    """:func:`_pair_log_probs` as a module's forward, so DistributedDataParallel sees (and syncs) the pass."""

    def __init__(self, model: SIDGenerator):
        super().__init__()
        self.model = model

    def forward(self, ctx: Context, chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _pair_log_probs(self.model, ctx, chosen, rejected)


def _pair_log_probs(model: SIDGenerator, ctx: Context, chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each context once, score both SIDs (sharing its cross-attention keys): (P,), (P,)."""
    memory, mask = model.encode(ctx)  # (P, S, C)
    both = torch.stack([chosen, rejected], dim=1).flatten(0, 1)  # (2P, L): rows 2p, 2p+1 belong to context p
    lp = model.sequence_log_prob(None, mask, both, model.cross_kv(memory)).view(-1, 2)  # (P, 2)
    return lp[:, 0], lp[:, 1]


@torch.no_grad()
def reference_log_probs(reference: SIDGenerator, bank: ImageBank, pairs: PreferencePairs, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_ref of every pair's chosen and rejected SID, computed once (the reference is frozen)."""
    reference.eval()
    out_c, out_r = torch.empty(len(pairs)), torch.empty(len(pairs))
    for idx in _batches(len(pairs), batch_size, None):
        out_c[idx], out_r[idx] = _pair_log_probs(reference, pairs.rows.context(bank, idx), pairs.chosen[idx], pairs.rejected[idx])
    return out_c, out_r


@torch.no_grad()
def evaluate_preferences(policy: SIDGenerator, bank: ImageBank, *, pairs: PreferencePairs, ref_logps: tuple[torch.Tensor, torch.Tensor], beta: float, batch_size: int = 1024) -> dict:
    """Preference metrics of ``policy`` on ``pairs`` (typically held out).

    preference_accuracy: share of pairs whose implicit reward ranks chosen above rejected (DPO's own metric);
    policy_ranks_chosen / reference_ranks_chosen: share with log pi(chosen) > log pi(rejected);
    reward_margin: mean reward(chosen) - reward(rejected); loss: mean DPO loss.
    """
    policy.eval()
    pc, pr = torch.empty(len(pairs)), torch.empty(len(pairs))
    for idx in _batches(len(pairs), batch_size, None):
        pc[idx], pr[idx] = _pair_log_probs(policy, pairs.rows.context(bank, idx), pairs.chosen[idx], pairs.rejected[idx])
    rc, rr = ref_logps
    loss, cr, rj = dpo_loss(pc, pr, rc, rr, beta)
    return {
        "loss": float(loss.mean()),
        "preference_accuracy": float((cr > rj).float().mean()),
        "reward_margin": float((cr - rj).mean()),
        "policy_ranks_chosen": float((pc > pr).float().mean()),
        "reference_ranks_chosen": float((rc > rr).float().mean()),
        "n_pairs": len(pairs),
    }


@torch.no_grad()
def token_kl(policy: SIDGenerator, reference: SIDGenerator, *, bank: ImageBank, rows: ContextRows, sids: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean over contexts and SID levels of KL(pi(.|x, prefix) || pi_ref(.|x, prefix)), prefixes from ``sids``.

    Exact per level (the full code distribution), nats per level.
    """
    policy.eval()
    reference.eval()
    total, n = 0.0, 0
    for idx in _batches(len(rows), batch_size, None):
        ctx = rows.context(bank, idx)
        lp = policy.logits_for(*policy.encode(ctx), sids=sids[idx])
        lr = reference.logits_for(*reference.encode(ctx), sids=sids[idx])
        for a, b in zip(lp, lr, strict=True):
            pa, pb = F.log_softmax(a, -1), F.log_softmax(b, -1)  # (B, V)
            total += float((pa.exp() * (pa - pb)).sum())
            n += len(idx)
    return total / max(n, 1) / policy.cfg.n_levels


def train_dpo(
    policy: SIDGenerator,
    reference: SIDGenerator,
    *,
    bank: ImageBank,
    pairs: PreferencePairs,
    beta: float,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    sft_weight: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    val: PreferencePairs | None = None,
    on_epoch=None,
) -> list[dict]:
    """DPO against the frozen ``reference``; ``sft_weight`` adds the chosen SID's NLL (RPO-style anchor).

    ``on_epoch(epoch, record)`` as in :func:`train_sid_model`.
    """
    for p in reference.parameters():
        p.requires_grad_(False)
    reference.eval()
    ref = reference_log_probs(reference, bank, pairs)
    ref_val = reference_log_probs(reference, bank, val) if val is not None and len(val) else None
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(policy, lr, weight_decay)
    world = distributed.world()
    scorer = distributed.wrap(_PairScorer(policy), world)
    steps_per_epoch = -(-len(pairs) // batch_size)
    total, step, history = epochs * steps_per_epoch, 0, []
    for epoch in range(1, epochs + 1):
        policy.train()
        t0 = time.perf_counter()
        sums = np.zeros(3)  # loss, accuracy, margin (summed over pairs)
        for idx in _batches(len(pairs), batch_size, gen):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, lr, min(20, total // 10 + 1))
            share = distributed.shard(idx, world)
            pc, pr = scorer(pairs.rows.context(bank, share), pairs.chosen[share], pairs.rejected[share])
            loss, cr, rj = dpo_loss(pc, pr, ref[0][share], ref[1][share], beta)
            objective = loss.mean() - sft_weight * pc.mean() / policy.cfg.n_levels
            opt.zero_grad(set_to_none=True)
            (objective * distributed.share_scale(len(share), len(idx), world)).backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
            opt.step()
            step += 1
            sums += [loss.detach().sum().item(), float((cr > rj).sum()), float((cr - rj).sum())]
        sums = np.asarray(distributed.all_sum(sums.tolist(), world))
        n = len(pairs)
        record = {"epoch": epoch, "loss": sums[0] / n, "preference_accuracy": sums[1] / n, "reward_margin": sums[2] / n, "seconds": time.perf_counter() - t0}
        if ref_val is not None:
            held = evaluate_preferences(policy, bank, pairs=val, ref_logps=ref_val, beta=beta)
            record.update({"val_loss": held["loss"], "val_preference_accuracy": held["preference_accuracy"]})
        if on_epoch is not None:
            on_epoch(epoch, record)
        log.info("dpo epoch %d/%d: %s", epoch, epochs, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
        history.append(record)
    policy.eval()
    return history
