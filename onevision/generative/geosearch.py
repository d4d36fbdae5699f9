"""Geometry-aware constrained beam search: residual search over the VRQ levels, the decoder tied to the codebooks,
the leaf head over the beam's items.

For a model with ``geo_levels = G`` (onevision.generative.model) the search is

1. **levels 0 .. G-1** (the tokenizer's residual levels): each beam carries the
   residual ``r`` of the query's aligned embedding after its prefix's codes. With
   a tied decoder (``GeneratorConfig.tied_head``) the level's logits are
   ``(1 - w) x scale_l (2 r.c - ||c||^2) + w x`` the decoder's own logits, which
   score codes the same way against the residual of its *corrected* query
   embedding (``w = learned_weight``, chosen on VAL; 0 skips the decoder, 1 is
   the decoder alone). Untied (the decoder before 2026-12): geometry plus
   ``learned_weight`` x a free head. Each level is a softmax over the trie's
   valid children of the beam's prefix (``log_softmax_over``, the normalisation
   training uses: a code that is the only continuation costs nothing); the top
   ``beam_width`` prefixes survive, ``r`` moves on by the chosen code.
2. **the remaining levels** (disambiguation) are not decoded step by step: the
   items under each kept prefix are contiguous leaves of the trie, so they are
   expanded at once (at most ``max_leaves`` per prefix) - no forced
   single-child steps.
   With a leaf head and ``shopper_weight`` ``s > 0`` (chosen on VAL after SFT) each child's logit gains
   ``s x <lift_u, makeup(child)>``: the shopper's log lift of each brand and category (from their logged clicks and
   orders; 0 for an anonymous query) against the brand and category shares of the items under that prefix, so
   for the same photo two shoppers keep different prefixes. The term chooses which prefixes survive; the leaf
   head reads the prefix's score without it (it has the shopper's lifts per item itself).
3. **the leaf head** (onevision.generative.leaf), when the model has one, scores
   those candidates with the per-item store and the user's history; without
   one, the prefix's beam score ranks them.

Nothing is proportional to the catalog: per query the work is
``G x beam_width x V_l`` for the levels and ``beam_width x max_leaves`` for the
leaves. Every returned item is a catalog leaf, so the invalid-SID rate is 0.

``constrained=False`` drops the trie mask (the baseline the constrained search's overhead is measured
against): prefixes that continue no catalog SID survive in the beam and expand to nothing; the result's
``dead_prefixes`` is their share of the final beam (what the trie prevents).
"""

from __future__ import annotations

import math

import torch

from onevision.generative.model import Context, SIDGenerator, eval_mode, log_softmax_over
from onevision.generative.nodes import node_geometry, trie_paths
from onevision.generative.results import BeamSearchResult
from onevision.generative.tensors import take_rows
from onevision.generative.trie import SIDTrie

MAX_LEAVES = 8  # items expanded per kept prefix (collisions beyond this are rare and dropped)


@torch.inference_mode()
def geometric_beam_search(
    model: SIDGenerator, ctx: Context, *, trie: SIDTrie, beam_width: int, k: int, max_leaves: int = MAX_LEAVES,
    learned_weight: float | None = None, use_leaf: bool = True, level_widths: tuple[int, ...] | None = None, geo_weight: float = 1.0,
    constrained: bool = True, shopper_weight: float | None = None, beam_margin: float = math.inf, visual_select=None,
) -> BeamSearchResult:
    """Top-``k`` items per query (see the module docstring). ``learned_weight`` None: the model's own
    (chosen on VAL); ``use_leaf`` False: rank by the beam score alone (an ablation); ``level_widths``: beams
    kept after each geometric level (dynamic pruning), never fewer than needed for ``k`` items; ``geo_weight``
    0: the learned term alone (an ablation); ``constrained`` False: no trie mask (see the module docstring);
    ``shopper_weight`` None: the model's own (0 without a leaf head: the shopper term reads its user store);
    ``beam_margin`` (dynamic pruning): after each level a query keeps only the beams within that many nats of its best,
    and never fewer than it takes for the items under them to number ``k``; ``visual_select``: the visual tokens the
    decoder's context encoder reads (onevision.generative.pruning.select_visual_tokens; nothing without the decoder)."""
    with eval_mode(model):
        return _search(model, ctx, trie=trie, beam_width=beam_width, k=k, max_leaves=max_leaves, learned_weight=learned_weight,
                       use_leaf=use_leaf, level_widths=level_widths, geo_weight=geo_weight, constrained=constrained,
                       shopper_weight=shopper_weight, beam_margin=beam_margin, visual_select=visual_select)


class ShopperTerm:
    """The shopper's prefix term of the beam (see the module docstring): ``weight x <lift_u, makeup(child)>`` for the
    children a level reads, nothing else. Per level it takes the cheaper of two routes: one (B x A) x (A x N_{l+1})
    product over every depth-(l+1) prefix when the level has no more prefixes than the children read (the demo
    catalogs' levels), else the makeup of the read children only, so a query's work stays bounded by its beam, never
    by the catalog (a 1M-item catalog's deepest level)."""

    def __init__(self, makeups: list[torch.Tensor], lift: torch.Tensor, weight: float):
        self.makeups, self.lift, self.weight = makeups, lift, weight  # per level (N_{l+1}, A); (B, A)

    def __call__(self, level: int, child: torch.Tensor, query_of: torch.Tensor) -> torch.Tensor:
        """(R, V) child node ids (-1: no such prefix; it reads an arbitrary value the trie mask drops), (R,) query
        row of each -> (R, V) the term."""
        makeup, c = self.makeups[level], child.clamp(min=0)
        if makeup.shape[0] <= c.numel():
            table = self.weight * (self.lift @ makeup.T)  # (B, N): every prefix of the level for each query
            return table.take(query_of.unsqueeze(1) * makeup.shape[0] + c)
        rows = makeup.index_select(0, c.reshape(-1)).view(*c.shape, -1)  # (R, V, A)
        return self.weight * torch.einsum("rva,ra->rv", rows, self.lift.index_select(0, query_of))


def shopper_scores(model: SIDGenerator, ctx: Context, trie: SIDTrie, weight: float | None = None) -> ShopperTerm | None:
    """The beam's shopper term (:class:`ShopperTerm`) for the queries of ``ctx``; None when the weight is 0, the model
    has no leaf head or every query is anonymous (then it changes nothing)."""
    s = float(model.shopper_weight) if weight is None else float(weight)
    leaf = model.leaf
    if not s or leaf is None or ctx.user is None or not bool((ctx.user > 0).any()):
        return None
    return ShopperTerm([leaf.subtree_makeup(trie, level + 1) for level in range(model.cfg.geo_levels)], leaf.user_lift(ctx.user), s)


def _search(model, ctx, *, trie, beam_width, k, max_leaves, learned_weight, use_leaf, level_widths, geo_weight, constrained=True,
            shopper_weight=None, beam_margin=math.inf, visual_select=None) -> BeamSearchResult:
    cfg = model.cfg
    G, L = cfg.geo_levels, cfg.n_levels
    lam = float(model.learned_weight) if learned_weight is None else float(learned_weight)
    query = ctx.image.float()  # (B, D) aligned embedding
    B = query.shape[0]
    shopper = shopper_scores(model, ctx, trie, shopper_weight) if constrained else None
    geom = node_geometry(model, trie)  # None: residual geometry over the codebooks
    learned = lam != 0.0 or geo_weight == 0.0
    if geo_weight == 0.0 and lam == 0.0:
        lam = 1.0
    shift = None
    if learned:
        memory, mem_mask = model.encode(ctx, visual_select)
        cross = model.cross_kv(memory)
        caches: list[dict] = [{} for _ in model.decoder]
        if model.tied:
            shift = model.query_shift(query).unsqueeze(1)  # (B, 1, D): once per query, shared by its beams
    width = 1
    beam = torch.zeros(B, 1)
    plain = beam  # the beam's scores without the shopper term (the leaf head's prefix feature)
    nodes = torch.zeros(B, 1, dtype=torch.long)
    resid = query.unsqueeze(1)  # (B, 1, D)
    prev = None
    for level in range(G):
        V = cfg.codebook_sizes[level]
        h = None
        if learned:
            x = model.step_input(level, prev, B * width)
            h = model.decode(x, cross, mem_mask, caches)[:, 0]
        beam_shift = None if shift is None else shift.expand(-1, width, -1).reshape(B * width, -1)
        # the children of every beam's prefix (one read), when node geometry or the shopper term needs them
        child = None
        if geom is not None or shopper is not None:
            flat_nodes = nodes.reshape(-1)
            child = trie.children(level, flat_nodes.clamp(min=0))  # (B*width, V)
            if not constrained:  # a prefix outside the catalog has no children (constrained: its beam score is -inf already)
                child = child.masked_fill(flat_nodes.unsqueeze(1) < 0, -1)
        if geom is None:
            logits = model.level_logits(h, level, resid=resid.reshape(B * width, -1), learned_weight=lam, geo_weight=geo_weight, shift=beam_shift)
        else:
            logits = model.level_logits(h, level, query=query, group=width, children=child, nodes=geom, learned_weight=lam, geo_weight=geo_weight,
                                        shift=beam_shift, resid=None if geom.exact[level] else resid.reshape(B * width, -1))
        # one normalisation with training (model.log_softmax_over): a softmax over the trie's valid children
        if shopper is None:
            allowed = None if not constrained else (child >= 0 if child is not None else trie.allowed(level, nodes.reshape(-1).clamp(min=0)))
            logp = logp_plain = log_softmax_over(logits, allowed)
        else:
            allowed = child >= 0
            logp_plain = log_softmax_over(logits, allowed)
            query_of = torch.arange(B).repeat_interleave(width)  # (B*width,)
            logp = log_softmax_over(logits + shopper(level, child, query_of), allowed)
        cand = (beam.unsqueeze(-1) + logp.view(B, width, V)).view(B, width * V)
        keep = beam_width if level_widths is None else max(1, int(level_widths[min(level, len(level_widths) - 1)]))
        keep = min(keep, width * V)
        beam, idx = cand.topk(keep, dim=-1)
        parent, code = idx // V, idx % V
        if shopper is not None:
            plain = (plain.unsqueeze(-1) + logp_plain.view(B, width, V)).view(B, width * V).gather(1, idx)
        else:
            plain = beam
        if child is not None:  # the kept children's ids, read from the table already in hand
            nodes = child.view(B, width * V).gather(1, idx)
        else:
            nodes = trie.child(level, nodes.gather(1, parent).reshape(-1), code.reshape(-1)).view(B, keep)
        if math.isfinite(beam_margin) and keep > 1:
            n_keep = margin_keep(beam, trie.subtree_size(level + 1, nodes), beam_margin, k)  # (B,)
            keep = int(n_keep.max())
            dead_beam = torch.arange(keep) >= n_keep.unsqueeze(1)  # (B, keep) a query that keeps fewer than the widest
            beam, plain = beam[:, :keep].masked_fill(dead_beam, float("-inf")), plain[:, :keep].masked_fill(dead_beam, float("-inf"))
            nodes, parent, code = nodes[:, :keep].masked_fill(dead_beam, -1), parent[:, :keep], code[:, :keep]
        if geom is None or not all(geom.exact[level + 1 :]):  # the residual, for the levels that score codebooks
            resid = resid.gather(1, parent.unsqueeze(-1).expand(-1, -1, resid.shape[-1])) - model.codebook(level)[code]
        if learned and level < G - 1:
            rows = (torch.arange(B).unsqueeze(1) * width + parent).reshape(-1)
            for cache in caches:
                cache["k"], cache["v"] = cache["k"][rows], cache["v"][rows]
        width, prev = keep, code.reshape(-1)
    dead = ~torch.isfinite(beam)  # (B, W) masked prefixes that filled the top-k
    dead_prefixes = None  # unconstrained: the share of generated prefixes that continue no catalog SID
    if not constrained:
        generated = nodes[~dead]
        dead_prefixes = float((generated < 0).float().mean()) if generated.numel() else 0.0
    nodes = nodes.masked_fill(dead, -1)
    # expand the leaves under each kept prefix: a contiguous run of sorted trie rows
    start = take_rows(trie.leaf_start[G], nodes.clamp(min=0))  # (B, W)
    count = torch.where(nodes >= 0, take_rows(trie.leaf_count[G], nodes.clamp(min=0)), torch.zeros_like(nodes)).clamp(max=max_leaves)
    m = torch.arange(max_leaves)
    leaves = (start.unsqueeze(-1) + m).reshape(B, -1)  # (B, W*ml)
    ok = (m < count.unsqueeze(-1)).reshape(B, -1)
    prefix = beam.unsqueeze(-1).expand(-1, -1, max_leaves).reshape(B, -1)
    plain_prefix = plain.unsqueeze(-1).expand(-1, -1, max_leaves).reshape(B, -1)
    # compact: real leaves first (stable, so beam order is kept), the width cut to the fullest query's count
    order = torch.argsort((~ok).to(torch.int8), dim=1, stable=True)[:, : max(int(ok.sum(1).max()), 1)]
    leaves, ok, prefix, plain_prefix = leaves.gather(1, order), ok.gather(1, order), prefix.gather(1, order), plain_prefix.gather(1, order)
    leaves = leaves.masked_fill(~ok, -1)
    prefix = prefix.masked_fill(~ok, float("-inf"))
    plain_prefix = plain_prefix.masked_fill(~ok, float("-inf"))
    items = torch.where(ok, take_rows(trie.leaf_item, leaves.clamp(min=0)), torch.full_like(leaves, -1))
    leaf = model.leaf if use_leaf else None
    if leaf is not None:
        users = ctx.user if ctx.user is not None else torch.zeros(B, dtype=torch.long)
        score = leaf(query, leaf.rows(items), plain_prefix.masked_fill(~ok, 0.0), leaf.profile(users))
        score = score.masked_fill(~ok, float("-inf"))
    else:
        score = prefix
    n = min(k, score.shape[1])
    top, pos = score.topk(n, dim=1)
    chosen = leaves.gather(1, pos)
    out_items = items.gather(1, pos)
    finite = torch.isfinite(top)
    out_items = out_items.masked_fill(~finite, -1)
    sids = take_rows(trie.sids, chosen.clamp(min=0)).masked_fill(~finite.unsqueeze(-1), -1)
    plain_top = plain_prefix.gather(1, pos).masked_fill(~finite, float("-inf")) if shopper is not None else None
    if n < k:
        pad = k - n
        sids = torch.cat([sids, sids.new_full((B, pad, L), -1)], dim=1)
        top = torch.cat([top, top.new_full((B, pad), float("-inf"))], dim=1)
        out_items = torch.cat([out_items, out_items.new_full((B, pad), -1)], dim=1)
        plain_top = None if plain_top is None else torch.cat([plain_top, plain_top.new_full((B, pad), float("-inf"))], dim=1)
    return BeamSearchResult(sids=sids, scores=top, item_ids=out_items, dead_prefixes=dead_prefixes, prefix_scores=plain_top)


def margin_keep(beam: torch.Tensor, items: torch.Tensor, margin: float, k: int) -> torch.Tensor:
    """Score-margin pruning: (B, W) beam scores best first (-inf: dead), (B, W) catalog items under each prefix ->
    (B,) beams each query keeps: those within ``margin`` nats of its best, and at least the fewest best beams whose
    items number ``k`` (or all the beam holds), so the search never returns fewer items than it could."""
    finite = torch.isfinite(beam)
    n_margin = (beam >= beam[:, :1] - margin).sum(1)
    cum = (items * finite).cumsum(1)  # (B, W)
    target = cum[:, -1:].clamp(max=k)
    n_cover = (cum < target).sum(1) + 1
    return torch.maximum(n_margin, n_cover).clamp(min=1, max=beam.shape[1])


def candidate_prefix_scores(model: SIDGenerator, ctx: Context, *, sids: torch.Tensor, learned_weight: float | None = None,
                            trie: SIDTrie | None = None, shopper: bool = True) -> torch.Tensor:
    """Beam score of given items' prefixes: ctx (B rows), sids (B, M, L) (-1 rows pad) -> (B, M) summed
    log-probabilities over the geometric levels (-inf for pads), the value constrained beam search gives them
    when ``trie`` is given (each level normalised over the trie's valid children, the shopper term included;
    ``shopper`` False: without it, the search's ``prefix_scores``, what the leaf head reads)."""
    cfg = model.cfg
    G = cfg.geo_levels
    lam = float(model.learned_weight) if learned_weight is None else float(learned_weight)
    B, M, L = sids.shape
    valid = (sids >= 0).all(-1)
    flat = sids.clamp(min=0).reshape(B * M, L)
    query = ctx.image.float().repeat_interleave(M, 0)
    geom = node_geometry(model, trie)
    resid = model.residuals(query, flat)  # (BM, G, D)
    h = shift = None
    children = trie_paths(trie, flat, G) if trie is not None else None
    allowed = [c >= 0 for c in children] if children is not None else [None] * G
    shopper = shopper_scores(model, ctx, trie) if trie is not None and shopper else None
    query_of = torch.arange(B).repeat_interleave(M)  # (BM,)
    with torch.no_grad(), eval_mode(model):
        if lam != 0.0:
            memory, mask = model.encode(ctx)
            cross = [(k_.repeat_interleave(M, 0), v_.repeat_interleave(M, 0)) for k_, v_ in model.cross_kv(memory)]
            h = model.decode(model.decoder_inputs(flat), cross, mask.repeat_interleave(M, 0))
            shift = model.query_shift(query) if model.tied else None
        total = torch.zeros(B * M)
        for level in range(G):
            logits = model.level_logits(None if h is None else h[:, level], level, resid=resid[:, level], learned_weight=lam,
                                        shift=shift, query=query, children=None if geom is None else children[level], nodes=geom)
            if shopper is not None:  # the search's shopper term, over the same children
                logits = logits + shopper(level, children[level], query_of)
            total += log_softmax_over(logits, allowed[level]).gather(1, flat[:, level : level + 1]).squeeze(1)
    return total.view(B, M).masked_fill(~valid, float("-inf"))
