"""Beam search over semantic IDs, constrained to the catalog by the SID trie.

Generation runs level by level for all queries and beams at once:

* the context is encoded once per query; each decoder layer's cross-attention
  keys/values are computed once and shared by the query's beams (the beams of
  a query are folded into the attention's query axis, not copied per beam);
* the decoder's self-attention keeps a KV cache of the SID prefix, re-ordered
  with the surviving beams at every step (one gather, no recomputation);
* with ``constrained=True`` the log-probabilities of codes that continue no
  catalog SID are set to -inf before the top-k, so every finished beam is an
  existing item: the invalid-SID rate is 0 by construction, not by luck.

Scores are log p(SID | context) under the model (the sum over levels of the
per-level log-softmax); masking removes candidates but does not renormalise,
as Hugging Face's ``prefix_allowed_tokens_fn`` does, so a constrained and an
unconstrained search score the same SID identically. The last step keeps the
top ``k`` (which may exceed the beam width) of all W x V_last finished
candidates; SIDs are unique per item, so these are ``k`` distinct items.

``pruning`` (onevision.generative.pruning) trades exactness for speed: fewer
visual tokens, fewer beams, early exit of settled beams; a config that prunes
nothing runs the plain search below unchanged. A geometric model
(onevision.generative.geosearch) reads the per-level widths, the score margin
and the visual tokens (its decoder's context, when the decoder runs); early
exit changes nothing there (a kept prefix's items are expanded at once).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from onevision.generative.geosearch import geometric_beam_search
from onevision.generative.model import Context, SIDGenerator, eval_mode
from onevision.generative.pruning import PruningConfig, pruned_beam_search, select_visual_tokens
from onevision.generative.results import BeamSearchResult
from onevision.generative.trie import SIDTrie

__all__ = ["BeamSearchResult", "beam_search", "catalog_log_probs"]


@torch.inference_mode()
def beam_search(
    model: SIDGenerator,
    ctx: Context,
    *,
    trie: SIDTrie,
    beam_width: int,
    k: int,
    constrained: bool = True,
    pruning: PruningConfig | None = None,
) -> BeamSearchResult:
    """Generate the ``k`` most likely SIDs per query with beam search of width ``max(beam_width, k)``.

    ``trie`` constrains the search (``constrained=True``) and maps SIDs to items
    (always). ``constrained=False`` is the plain beam search the benchmark
    compares against; its SIDs can name no item (item id -1). ``pruning``: dynamic
    pruning (constrained search only); None or a config that prunes nothing: exact beam search.
    """
    if beam_width < 1 or k < 1:
        raise ValueError(f"beam_width and k must be >= 1, got {beam_width} and {k}")
    if not constrained and pruning is not None and pruning.active:
        raise ValueError("dynamic pruning needs the constrained search (it counts catalog items under prefixes)")
    if model.cfg.geo_levels:
        on = pruning is not None and pruning.active
        widths = pruning.level_beam_widths if on else None
        select = None
        if on and pruning.prunes_visual:
            select = functools.partial(select_visual_tokens, keep_mass=pruning.visual_keep_mass, min_tokens=pruning.min_visual_tokens)
        return geometric_beam_search(model, ctx, trie=trie, beam_width=max(beam_width, k), k=k, constrained=constrained,
                                     level_widths=None if widths is None else tuple(max(int(w), k) for w in widths),
                                     beam_margin=pruning.beam_margin if on else math.inf, visual_select=select)
    if pruning is not None and pruning.active:
        return pruned_beam_search(model, ctx, trie=trie, beam_width=beam_width, k=k, pruning=pruning)
    # Every kept prefix has at least one catalog continuation, so keeping >= k beams per level
    # guarantees k finished items (when the catalog has them); fewer beams could strand the search.
    with eval_mode(model):
        return _beam_search(model, ctx, trie=trie, beam_width=max(beam_width, k), k=k, constrained=constrained)


def _beam_search(model: SIDGenerator, ctx: Context, *, trie: SIDTrie, beam_width: int, k: int, constrained: bool) -> BeamSearchResult:
    sizes, L = model.cfg.codebook_sizes, model.cfg.n_levels
    memory, mem_mask = model.encode(ctx)  # (B, S, C), (B, S)
    B, dev = memory.shape[0], memory.device
    cross = model.cross_kv(memory)  # n_dec x (B, nh, S, hd): shared by each query's beams, never copied
    caches: list[dict] = [{} for _ in model.decoder]
    width = 1
    beam_scores = torch.zeros(B, 1, device=dev)  # (B, width)
    prefix = torch.zeros(B, 1, 0, dtype=torch.long, device=dev)  # (B, width, l)
    nodes = torch.zeros(B, 1, dtype=torch.long)  # (B, width) trie node of each prefix
    prev_codes = None
    for level in range(L):
        V = sizes[level]
        x = model.step_input(level, prev_codes, B * width)  # (R, 1, C)
        h = model.decode(x, cross, mem_mask, caches)  # (R, 1, C)
        logp = F.log_softmax(model.level_logits(h[:, 0], level).float(), dim=-1)  # (R, V)
        if constrained:
            allowed = trie.allowed(level, nodes.reshape(-1).clamp(min=0)).to(dev)  # (R, V)
            logp = logp.masked_fill(~allowed, float("-inf"))
        cand = (beam_scores.unsqueeze(-1) + logp.view(B, width, V)).view(B, width * V)  # (B, width*V)
        keep = min(k if level == L - 1 else beam_width, width * V)
        beam_scores, idx = cand.topk(keep, dim=-1)  # (B, keep)
        parent, code = idx // V, idx % V  # (B, keep)
        prefix = torch.cat([prefix.gather(1, parent.unsqueeze(-1).expand(-1, -1, level)), code.unsqueeze(-1)], dim=-1)
        if constrained:
            nodes = trie.child(level, nodes.gather(1, parent.cpu()).reshape(-1), code.cpu().reshape(-1)).view(B, keep)
        if level == L - 1:
            break
        # Re-order the self-attention caches to the surviving beams; widen the per-query state once.
        rows = (torch.arange(B, device=dev).unsqueeze(1) * width + parent).reshape(-1)  # (B*keep,)
        for cache in caches:
            cache["k"], cache["v"] = cache["k"][rows], cache["v"][rows]
        width = keep
        prev_codes = code.reshape(-1)  # (R,)
    sids, scores = prefix, beam_scores  # (B, keep, L), (B, keep)
    if keep < k:  # fewer candidates than asked for (tiny codebooks): pad
        pad = k - keep
        sids = torch.cat([sids, sids.new_full((B, pad, L), -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((B, pad), float("-inf"))], dim=1)
    item_ids = trie.lookup(sids.reshape(-1, L).cpu()).view(B, k).to(dev)
    dead = ~torch.isfinite(scores)  # masked candidates that filled the top-k: no item
    item_ids = item_ids.masked_fill(dead, -1)
    sids = sids.masked_fill(dead.unsqueeze(-1), -1)
    return BeamSearchResult(sids=sids, scores=scores, item_ids=item_ids)


@torch.inference_mode()
def catalog_log_probs(model: SIDGenerator, ctx: Context, sids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Exact log p(sid | context) of every SID for every query: (B contexts, N sids) -> (B, N).

    Exhaustive scoring (teacher forcing over the whole catalog): the ground truth
    the beam-search tests compare against, and the exact catalog KL of the DPO stage.
    """
    with eval_mode(model):
        memory, mask = model.encode(ctx)  # (B, S, C)
        B, N = memory.shape[0], sids.shape[0]
        out = torch.empty(B, N)
        per = max(1, chunk // N)  # queries per forward pass
        for start in range(0, B, per):
            q = torch.arange(start, min(B, start + per))
            cross = model.cross_kv(memory[q])  # K/V once per query, shared by its N candidate SIDs
            query = None if ctx.image is None else ctx.image[q].float().repeat_interleave(N, 0)
            lp = model.sequence_log_prob(None, mask[q], sids.repeat(len(q), 1), cross, query)  # (q*N,)
            out[q] = lp.view(len(q), N).float().cpu()
    return out
