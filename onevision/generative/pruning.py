"""Dynamic pruning of constrained beam search: fewer context tokens, fewer beams, fewer decoding steps.

Three methods, each switched by one knob of :class:`PruningConfig` and composable;
every knob's default is "off", and a config with every knob off decodes exactly
as :func:`onevision.generative.decode.beam_search` does.

* **Visual-token pruning** (``visual_keep_mass``): a query photo's visual tokens
  are not equally informative (Fashion-MNIST articles sit on a black
  background; a CNN's background cells barely fire). Each token is scored by
  the L2 norm of its (pooled) feature and every query keeps the smallest set
  of its strongest tokens whose share of the query's total norm reaches
  ``visual_keep_mass`` (at least ``min_visual_tokens``): the keep ratio adapts
  per query. The rest are dropped *before* the context encoder, so the
  encoder's self-attention and every decoder step's cross-attention get
  shorter; queries of a batch are padded to the longest kept set and masked.
* **Beam pruning** (``beam_margin``, ``level_beam_widths``): after each level a
  query drops the beams whose log-probability trails its best beam by more than
  ``beam_margin`` (a confident query needs one beam, an ambiguous one many),
  and keeps at most ``level_beam_widths[level]`` beams. The beam axis is then
  compacted to the most survivors of any query in the batch, so the work
  really shrinks (at batch 1 exactly; in a batch, the widest query sets the
  width). Pruning never strands the search: each query keeps at least as many
  (best) beams as it takes for the catalog items under their prefixes
  (``SIDTrie.leaf_count``) to number ``k``, so ``k`` items are always found when
  the catalog has them, even with widths below ``k``.
* **Early exit** (``early_exit``): a beam whose prefix has exactly one catalog
  completion is finished from the trie (its SID is the one leaf under it)
  instead of being decoded level after level; only unsettled beams keep
  decoding, and the search stops when none is left. Skipping the forced codes
  is exact only if they cost nothing, i.e. under the *constrained,
  renormalised* distribution (softmax over the codes the trie allows), where a
  forced code has probability 1. Early exit therefore scores every beam under
  that distribution (``renormalise``); plain beam search scores under the
  model's unconstrained distribution (see onevision.generative.decode), so
  early exit may reorder near-ties and the calibration stage measures what
  that costs. Finished beams keep competing for the beam's slots at each
  level, and since scores only fall as levels are added, an unsettled beam
  that already trails the k-th best finished one can never be returned: it
  stops too, and once no beam can change the top k the search ends. Early exit
  therefore returns exactly what a renormalised search without it returns.

Every generated SID still comes from the trie (masked codes or a trie leaf):
pruning cannot produce an invalid SID.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from onevision import atomic, paths
from onevision.generative.model import Context, SIDGenerator, eval_mode
from onevision.generative.results import BeamSearchResult
from onevision.generative.trie import SIDTrie

PRUNING_FILE = paths.PRUNING / "pruning.json"


@dataclass(frozen=True)
class PruningConfig:
    """One operating point of dynamic pruning; the defaults prune nothing.

    visual_keep_mass:  keep a query's strongest visual tokens until they hold this share of its total token norm (1.0: all)
    min_visual_tokens: visual tokens every query keeps at least
    beam_margin:       drop beams trailing the query's best by more than this many nats of log-probability (inf: off)
    level_beam_widths: beams kept after each level but the last, shallow to deep (a short list repeats its last value;
                       None: the search's beam width)
    early_exit:        finish a beam from the trie once its prefix has one catalog completion (implies renormalise)
    renormalise:       score under the constrained, renormalised distribution (softmax over the allowed codes only)
    """

    visual_keep_mass: float = 1.0
    min_visual_tokens: int = 1
    beam_margin: float = math.inf
    level_beam_widths: tuple[int, ...] | None = None
    early_exit: bool = False
    renormalise: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.visual_keep_mass <= 1.0:
            raise ValueError(f"visual_keep_mass must be in (0, 1], got {self.visual_keep_mass}")
        if self.min_visual_tokens < 1:
            raise ValueError(f"min_visual_tokens must be >= 1, got {self.min_visual_tokens}")
        if self.beam_margin is None or not self.beam_margin >= 0:
            raise ValueError(f"beam_margin must be >= 0 (inf: off), got {self.beam_margin}")
        if self.level_beam_widths is not None:
            widths = tuple(int(w) for w in self.level_beam_widths)
            if not widths or min(widths) < 1:
                raise ValueError(f"level_beam_widths must be a non-empty list of widths >= 1, got {self.level_beam_widths}")
            object.__setattr__(self, "level_beam_widths", widths)
        object.__setattr__(self, "beam_margin", float(self.beam_margin))

    # ------------------------------------------------------------------ what is on
    @property
    def prunes_visual(self) -> bool:
        return self.visual_keep_mass < 1.0

    @property
    def prunes_beams(self) -> bool:
        return math.isfinite(self.beam_margin) or self.level_beam_widths is not None

    @property
    def renormalised(self) -> bool:
        return self.renormalise or self.early_exit

    @property
    def active(self) -> bool:
        """False when the config changes nothing (plain beam search runs)."""
        return self.prunes_visual or self.prunes_beams or self.renormalised

    def level_width(self, level: int) -> int | None:
        """Configured width after ``level`` (None: not set)."""
        if self.level_beam_widths is None:
            return None
        return self.level_beam_widths[min(level, len(self.level_beam_widths) - 1)]

    def label(self) -> str:
        """Short name of the point for tables and plots, e.g. ``vis0.9+m3+w5,10+exit``; ``none`` when nothing is pruned."""
        parts = []
        if self.prunes_visual:
            parts.append(f"vis{self.visual_keep_mass:g}")
        if math.isfinite(self.beam_margin):
            parts.append(f"m{self.beam_margin:g}")
        if self.level_beam_widths is not None:
            parts.append("w" + ",".join(str(w) for w in self.level_beam_widths))
        if self.early_exit:
            parts.append("exit")
        elif self.renormalise:
            parts.append("renorm")
        return "+".join(parts) or "none"

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: an infinite margin is written as null."""
        out = asdict(self)
        out["beam_margin"] = self.beam_margin if math.isfinite(self.beam_margin) else None
        out["level_beam_widths"] = list(self.level_beam_widths) if self.level_beam_widths is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PruningConfig:
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown pruning keys {sorted(unknown)}")
        if data.get("beam_margin") is None:
            data.pop("beam_margin", None)
        return cls(**data)


NO_PRUNING = PruningConfig()


def save_pruning(config: PruningConfig, root: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``models/pruning/pruning.json``: the config (key ``pruning``) and how it was chosen (``extra``)."""
    path = Path(root) / PRUNING_FILE
    atomic.write_json(path, {"pruning": config.to_dict(), **(extra or {})})
    return path


def load_pruning(root: str | Path) -> PruningConfig | None:
    """The chosen config of a project root or bundle; None when the calibration has not run."""
    path = Path(root) / PRUNING_FILE
    if not path.exists():
        return None
    return PruningConfig.from_dict(json.loads(path.read_text())["pruning"])


# --------------------------------------------------------------------------- visual tokens


def select_visual_tokens(visual: torch.Tensor, keep_mass: float, min_tokens: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) visual tokens -> positions to keep (B, T_keep) long, strongest first, and their mask (B, T_keep).

    A query keeps its strongest tokens (L2 norm) until the kept share of its total
    norm reaches ``keep_mass``, and at least ``min_tokens``; T_keep is the batch's
    largest keep, shorter rows are padded (mask False).
    """
    B, T, _ = visual.shape
    score = visual.float().norm(dim=-1)  # (B, T)
    ranked, order = score.sort(dim=1, descending=True)  # (B, T)
    total = ranked.sum(dim=1, keepdim=True).clamp(min=1e-12)  # (B, 1)
    share_before = (ranked.cumsum(dim=1) - ranked) / total  # (B, T) share held by the stronger tokens
    n_keep = (share_before < keep_mass - 1e-6).sum(dim=1).clamp(min=min(min_tokens, T), max=T)  # (B,)
    if keep_mass >= 1.0:  # all of them, zero-norm tokens included
        n_keep = torch.full_like(n_keep, T)
    width = int(n_keep.max())
    mask = torch.arange(width, device=visual.device) < n_keep.unsqueeze(1)  # (B, T_keep)
    return order[:, :width], mask


# --------------------------------------------------------------------------- search


def _front(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the positions where ``mask`` holds, in their order, then the others: first ``width`` -> (idx, valid)."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]  # (B, width)
    return order, mask.gather(1, order)


@torch.inference_mode()
def pruned_beam_search(model: SIDGenerator, ctx: Context, *, trie: SIDTrie, beam_width: int, k: int, pruning: PruningConfig) -> BeamSearchResult:
    """Constrained beam search with dynamic pruning (module docstring); same contract as ``beam_search``.

    State per query: the *active* beams still being decoded (B, W, ...) and the
    *finished* pool (B, F) of beams settled by early exit (their leaf row). At each
    level the active beams' continuations and the finished beams compete in one
    top-k, as in a search that would decode the finished beams' forced codes.
    """
    if beam_width < 1 or k < 1:
        raise ValueError(f"beam_width and k must be >= 1, got {beam_width} and {k}")
    with eval_mode(model):
        return _pruned_search(model, ctx, trie=trie, beam_width=beam_width, k=k, pruning=pruning)


def _pruned_search(model: SIDGenerator, ctx: Context, *, trie: SIDTrie, beam_width: int, k: int, pruning: PruningConfig) -> BeamSearchResult:
    sizes, L = model.cfg.codebook_sizes, model.cfg.n_levels
    select = None
    if pruning.prunes_visual:
        select = functools.partial(select_visual_tokens, keep_mass=pruning.visual_keep_mass, min_tokens=pruning.min_visual_tokens)
    memory, mem_mask = model.encode(ctx, select)  # (B, S, C), (B, S)
    B, dev = memory.shape[0], memory.device
    cross = model.cross_kv(memory)  # n_dec x (B, nh, S, hd): shared by each query's beams
    caches: list[dict] = [{} for _ in model.decoder]
    neg_inf = float("-inf")
    W = 1  # active beams per query (the widest query; narrower ones pad with dead beams)
    scores = torch.zeros(B, 1, device=dev)  # (B, W)
    nodes = torch.zeros(B, 1, dtype=torch.long)  # (B, W) trie node of each prefix (cpu, like the trie)
    fin_scores = torch.zeros(B, 0)  # (B, F) finished beams' scores (cpu)
    fin_leaf = torch.zeros(B, 0, dtype=torch.long)  # (B, F) their leaf rows in the trie
    prev_codes = None
    for level in range(L):
        last = level == L - 1
        V = sizes[level]
        x = model.step_input(level, prev_codes, B * W)  # (R, 1, C)
        h = model.decode(x, cross, mem_mask, caches)  # (R, 1, C)
        logits = model.level_logits(h[:, 0], level).float()  # (R, V)
        allowed = trie.allowed(level, nodes.reshape(-1).clamp(min=0)).to(dev)  # (R, V)
        if pruning.renormalised:  # softmax over the allowed codes: a forced code costs log 1 = 0
            logp = F.log_softmax(logits.masked_fill(~allowed, neg_inf), dim=-1)
        else:
            logp = F.log_softmax(logits, dim=-1).masked_fill(~allowed, neg_inf)
        cand = (scores.unsqueeze(-1) + logp.view(B, W, V)).view(B, W * V)  # (B, W*V)
        n_new = W * V
        if fin_scores.shape[1]:
            cand = torch.cat([cand, fin_scores.to(dev)], dim=1)  # (B, W*V + F)
        width = pruning.level_width(level)
        keep = min(k if last else max(width or beam_width, k), cand.shape[1])
        top, idx = cand.topk(keep, dim=-1)  # (B, keep) best first
        top, idx = top.cpu(), idx.cpu()
        from_fin = idx >= n_new  # (B, keep) a finished beam kept its slot
        parent, code = (idx // V).clamp(max=W - 1), idx % V  # (B, keep); meaningless where from_fin
        child = trie.child(level, nodes.gather(1, parent).reshape(-1), code.reshape(-1)).view(B, keep)  # depth level+1
        if fin_scores.shape[1]:
            old_leaf = fin_leaf.gather(1, (idx - n_new).clamp(min=0, max=fin_leaf.shape[1] - 1))  # (B, keep)
        else:
            old_leaf = torch.zeros_like(idx)
        finite = torch.isfinite(top)  # (B, keep)
        covers = torch.where(from_fin, torch.ones_like(child), trie.subtree_size(level + 1, child)) * finite  # items under each
        n_keep = torch.full((B,), keep, dtype=torch.long)
        if pruning.prunes_beams and not last:
            n_margin = (top >= top[:, :1] - pruning.beam_margin).sum(dim=1)  # (B,)
            n_width = torch.full_like(n_margin, keep if width is None else min(width, keep))
            cum = covers.cumsum(dim=1)  # (B, keep)
            target = cum[:, -1].clamp(max=k)  # k items, or all the candidates have
            n_cover = (cum < target.unsqueeze(1)).sum(dim=1) + 1  # fewest best beams covering them
            n_keep = torch.maximum(torch.minimum(n_width, n_margin), n_cover).clamp(max=keep)
        live = (torch.arange(keep) < n_keep.unsqueeze(1)) & finite  # (B, keep)
        if last:
            settled = torch.ones_like(live)
        elif pruning.early_exit:
            settled = from_fin | (covers == 1)
        else:
            settled = torch.zeros_like(live)
        leaf = torch.where(from_fin, old_leaf, trie.only_leaf(level + 1, child))  # (B, keep) where settled
        # ---- the finished pool, best first (topk order is kept by the stable compaction)
        done = live & settled
        n_done = min(int(done.sum(dim=1).max()), k)  # finished beams beyond the k-th best can never be returned
        pos, valid = _front(done, n_done)
        fin_scores = top.gather(1, pos).masked_fill(~valid, neg_inf)  # (B, F)
        fin_leaf = leaf.gather(1, pos)
        # ---- the beams that keep decoding, compacted to the widest query
        active = live & ~settled
        if pruning.early_exit and n_done == k:
            # Scores only fall as levels are added: a beam already below the k-th finished score can never
            # reach the top k, so it stops here; when no beam can, the top k is settled and the search ends.
            active &= top >= fin_scores[:, k - 1 : k]
        W_new = int(active.sum(dim=1).max())
        if last or W_new == 0:
            break
        pos, valid = _front(active, W_new)  # (B, W_new)
        parent, code = parent.gather(1, pos), code.gather(1, pos)
        scores = top.gather(1, pos).masked_fill(~valid, neg_inf).to(dev)  # (B, W_new)
        nodes = child.gather(1, pos).masked_fill(~valid, -1)
        parent_d, code_d = parent.to(dev), code.to(dev)  # prefixes live in the trie nodes: SIDs come from leaves
        rows = (torch.arange(B, device=dev).unsqueeze(1) * W + parent_d).reshape(-1)  # (B*W_new,)
        for cache in caches:
            cache["k"], cache["v"] = cache["k"][rows], cache["v"][rows]
        W = W_new
        prev_codes = code_d.reshape(-1)  # (R,)
    out_scores, out_leaf = fin_scores[:, :k], fin_leaf[:, :k]  # (B, <=k) best first
    if out_scores.shape[1] < k:  # fewer candidates than asked for: pad
        pad = k - out_scores.shape[1]
        out_scores = torch.cat([out_scores, out_scores.new_full((B, pad), neg_inf)], dim=1)
        out_leaf = torch.cat([out_leaf, out_leaf.new_zeros((B, pad))], dim=1)
    dead = ~torch.isfinite(out_scores)  # (B, k)
    sids = trie.sids[out_leaf].masked_fill(dead.unsqueeze(-1), -1)  # (B, k, L)
    item_ids = trie.leaf_item[out_leaf].masked_fill(dead, -1)  # (B, k)
    return BeamSearchResult(sids=sids.to(dev), scores=out_scores.to(dev), item_ids=item_ids.to(dev))
