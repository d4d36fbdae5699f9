# Long on purpose: the whole network in one file (nanoGPT style), so its shapes read top to bottom.
"""The OneVision generative retriever: query image (+ user) -> semantic ID, one level per step.

OneVision (arXiv 2510.05759) replaces recall, pre-ranking and ranking with one
model that reads the query image and the shopper and *generates* the SIDs of
the products to show. This file is the whole network, nanoGPT style: a config
dataclass, a few small modules, and :class:`SIDGenerator` with
``forward(ctx, targets=None) -> (logits, loss)``.

Why an encoder-decoder (as OneRec, the paper's sibling system) and not a
decoder-only stack:

* The context (visual tokens, a global image embedding, a user token and the
  user's recent SIDs) is a *set* of heterogeneous tokens: the encoder reads it
  bidirectionally, so a visual token can attend to the history and back.
* Beam search expands each query into W beams. With an encoder-decoder the
  context is encoded **once per query** and its cross-attention keys/values
  are shared by the query's beams; only the L-token SID prefix is per beam, and
  its self-attention KV cache is a few tokens long. A decoder-only model would
  carry the ~30-token context in every beam's cache.
* The decoder is where the SID's hierarchy lives (shallow code = coarse
  visual cluster, last code = disambiguation), and it can be sized
  independently of the context encoder.

Context tokens (``S = 1 + T + 1 + H``)::

    [global image embedding] [T visual tokens] [user] [H recent SIDs of the user]

An anonymous query (pretraining, unknown user, serving without login) uses the
user row 0 and an empty history; SFT trains with some contexts anonymised so
that row 0 stays meaningful. A history item is one token: the sum of its SID's
code embeddings (shared with the decoder's input embeddings, so "the item I
clicked" and "the item I generate" live in one space) + action (click/order)
+ recency embeddings.

SID levels have their own codebook sizes ``V_l``; the decoder input at step
``l`` is BOS (l = 0) or the code of level ``l-1``, and level ``l`` has its own
output head over ``V_l`` codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# History actions: 0 pads an empty slot.
ACTION_PAD, ACTION_CLICK, ACTION_ORDER = 0, 1, 2
# (B, T, D) visual tokens -> positions to keep (B, T_keep) long, their mask (B, T_keep) bool
VisualSelect = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GeneratorConfig:
    """Shape of the network; saved with every checkpoint (``config.json``)."""

    codebook_sizes: tuple[int, ...] = (16, 16, 8)  # V_l per SID level, from the VRQ tokenizer
    token_dim: int = 64  # width of one visual token (encoder.token_dim)
    n_visual_tokens: int = 16  # T visual tokens per image (encoder.num_tokens, a square grid)
    visual_grid: int = 0  # pool the visual tokens to visual_grid x visual_grid cells first (0: keep all T); cheap CPU training
    embed_dim: int = 128  # global image embedding size (encoder.dim); 0: no global token
    n_users: int = 0  # known users; rows 1..n_users of the user table, row 0 = anonymous
    history_len: int = 10  # H most recent clicked/ordered items in the user context
    d_model: int = 128  # small: the demo trains on 2 CPU cores in minutes
    n_heads: int = 4
    n_enc_layers: int = 2
    n_dec_layers: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.1
    # Geometry-aware decoding: the first geo_levels SID levels are VRQ residual levels whose codebooks
    # (geo_dim wide) the model carries; their logits add the residual geometry of the query's aligned
    # embedding to the learned term (see SIDGenerator.geo_logits). 0: a purely learned decoder.
    geo_levels: int = 0
    geo_dim: int = 0
    geo_scale_init: float = 10.0
    # A decoder tied to the geometry (geometric levels): the decoder predicts a correction of the query's aligned
    # embedding from the context (photo, visual tokens, shopper) and the prefix, and scores each code by how much it
    # shrinks the *corrected* residual, with the tokenizer's codebooks as its output layer (see SIDGenerator.learned_logits).
    # False: the learned term is a free linear head added to the fixed geometry (the decoder before 2026-12).
    tied_head: bool = False
    # Node geometry (onevision.generative.nodes): geometric levels score each child prefix by the mean embedding of the
    # items under it plus the log of their count, instead of the codebooks' reconstruction; needs the trie and the leaf
    # head's item store at training and decoding (nodes=). False: the residual geometry over the codebooks.
    node_geometry: bool = False
    # The leaf head (onevision.generative.leaf) over the beam's items: catalog size, categories, brands; 0 items: none.
    leaf_items: int = 0
    leaf_categories: int = 0
    leaf_brands: int = 0
    leaf_hidden: int = 32
    leaf_views: int = 1  # catalog views stored per item

    def __post_init__(self) -> None:
        self.codebook_sizes = tuple(int(v) for v in self.codebook_sizes)
        if len(self.codebook_sizes) < 1 or min(self.codebook_sizes) < 1:
            raise ValueError(f"codebook_sizes must be >= 1 per level, got {self.codebook_sizes}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        side = math.isqrt(self.n_visual_tokens)
        if self.geo_levels and (self.geo_levels > len(self.codebook_sizes) or self.geo_dim < 1 or self.embed_dim != self.geo_dim):
            raise ValueError(f"geo_levels={self.geo_levels} needs <= {len(self.codebook_sizes)} levels and embed_dim == geo_dim > 0 "
                             f"(the query's aligned embedding), got embed_dim={self.embed_dim}, geo_dim={self.geo_dim}")
        if self.visual_grid and (side * side != self.n_visual_tokens or self.visual_grid > side):
            raise ValueError(f"visual_grid={self.visual_grid} needs a square token grid of at least that side, got {self.n_visual_tokens} tokens")

    @property
    def n_context_visual(self) -> int:
        """Visual tokens the context encoder sees."""
        return self.visual_grid**2 if self.visual_grid else self.n_visual_tokens

    @property
    def n_levels(self) -> int:
        return len(self.codebook_sizes)

    def to_dict(self) -> dict:
        return {**asdict(self), "codebook_sizes": list(self.codebook_sizes)}


@dataclass
class Context:
    """What the model reads for a batch of B queries.

    visual:  (B, T, token_dim) float  visual tokens of the query image
    image:   (B, embed_dim) float     global L2-normalised image embedding (None when embed_dim == 0)
    user:    (B,) long                user row, 0 = anonymous
    history: (B, H, L) long           SIDs of recent clicks/orders, newest first; rows of -1 pad
    action:  (B, H) long              ACTION_CLICK / ACTION_ORDER, ACTION_PAD where history pads
    """

    visual: torch.Tensor
    image: torch.Tensor | None = None
    user: torch.Tensor | None = None
    history: torch.Tensor | None = None
    action: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.visual.shape[0]

    def index(self, idx: torch.Tensor) -> Context:
        """The contexts of rows ``idx`` (e.g. a minibatch, or every beam of its query)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Context(pick(self.visual), pick(self.image), pick(self.user), pick(self.history), pick(self.action))


# --------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """Multi-head attention; self-attention (optionally causal, with a KV cache) or cross-attention."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hd)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)  # (B, S, C) each
        return self.heads(k), self.heads(v)  # (B, nh, S, hd)

    def forward(self, x, kv=None, mask=None, causal=False):
        """x: (N, T, C) queries; kv: precomputed (k, v) (G, nh, S, hd) or None (self-attention on x, G = N).

        mask: (G, S) bool, True = key may be attended (padding masks); causal: lower-triangular on T == S.
        Cross-attention shared by beams: when G < N, x holds N // G consecutive rows (the beams) per
        key row; they are folded into the query-position axis, so the keys are never copied per beam.
        """
        N, T, C = x.shape
        k, v = self.keys_values(x) if kv is None else kv  # (G, nh, S, hd)
        G = k.shape[0]
        q = self.heads(self.q(x.reshape(G, (N // G) * T, C)))  # (G, nh, N/G*T, hd)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (G, 1, 1, S)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=causal and T > 1)
        return self.proj(y.transpose(1, 2).reshape(N, T, C))  # (N, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.out = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.out(F.gelu(self.fc(x))))


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional self-attention over the context tokens."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.mlp = Attention(cfg), MLP(cfg)

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)  # (B, S, C)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention over the SID prefix, cross-attention to the context, MLP."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn, self.cross_attn, self.mlp = Attention(cfg), Attention(cfg), MLP(cfg)

    def forward(self, x, cross_kv, mem_mask, cache=None):
        """x: (N, t, C) new decoder tokens. cache: None (full prefix, causal) or a dict with this
        layer's self-attention 'k', 'v' (N, nh, t_past, hd), extended in place by the new tokens."""
        h = self.ln1(x)
        if cache is None:
            x = x + self.self_attn(h, causal=True)
        else:
            k, v = self.self_attn.keys_values(h)  # (N, nh, t, hd)
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            # Incremental decoding adds one token per step: it may attend to the whole cached prefix.
            x = x + self.self_attn(h, kv=(k, v))
        x = x + self.cross_attn(self.ln2(x), kv=cross_kv, mask=mem_mask)  # (N, t, C)
        return x + self.mlp(self.ln3(x))


# --------------------------------------------------------------------------- model


class SIDGenerator(nn.Module):
    """Encoder-decoder that generates an item's SID level by level (see the module docstring)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        C, L = cfg.d_model, cfg.n_levels
        # ---- context encoder
        self.visual_in = nn.Linear(cfg.token_dim, C)
        self.visual_pos = nn.Parameter(torch.zeros(cfg.n_context_visual, C))
        self.image_in = nn.Linear(cfg.embed_dim, C) if cfg.embed_dim > 0 else None
        self.user_emb = nn.Embedding(cfg.n_users + 1, C)  # row 0: anonymous
        self.action_emb = nn.Embedding(3, C)  # pad / click / order
        self.recency_emb = nn.Embedding(max(cfg.history_len, 1), C)
        self.type_emb = nn.Embedding(4, C)  # image, visual, user, history
        self.enc_drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_enc_layers))
        self.enc_ln = nn.LayerNorm(C)
        # ---- SID decoder: codes of every level in one table, level l at rows offsets[l]..offsets[l]+V_l
        offsets = torch.tensor([0, *torch.tensor(cfg.codebook_sizes).cumsum(0).tolist()[:-1]], dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)  # (L,)
        self.code_emb = nn.Embedding(sum(cfg.codebook_sizes), C)
        self.bos = nn.Parameter(torch.zeros(C))
        self.dec_pos = nn.Parameter(torch.zeros(L, C))
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_dec_layers))
        self.dec_ln = nn.LayerNorm(C)
        self.heads = nn.ModuleList(nn.Linear(C, V) for V in cfg.codebook_sizes)
        # ---- residual geometry of the VRQ levels: codebooks (sum V_l, D) at the code_emb offsets, a learnt scale per level
        G = cfg.geo_levels
        n_geo = int(sum(cfg.codebook_sizes[:G]))
        self.register_buffer("codebooks", torch.zeros(n_geo, max(cfg.geo_dim, 1)))  # set by set_codebooks
        self.geo_log_scale = nn.Parameter(torch.full((G,), math.log(cfg.geo_scale_init)))
        # weight of the learned term in decoding, chosen on VAL (0: the decoder is not run); with a tied head the
        # level logits are (1 - w) x geometry + w x decoder, so 1 is the decoder alone
        self.register_buffer("learned_weight", torch.ones(()))
        # weight of the shopper's prefix term in decoding (geosearch: the user's brand/category lift against what each
        # prefix holds), chosen on VAL after SFT; 0: every shopper gets the same beam for the same photo
        self.register_buffer("shopper_weight", torch.zeros(()))
        self.tied = bool(G and cfg.tied_head)
        if self.tied:
            D = cfg.geo_dim
            self.query_head = nn.Linear(C, D)  # decoder state -> correction of the query embedding (per level, by position)
            self.query_mix = nn.Linear(D, D, bias=False)  # a linear correction of the photo's embedding itself
            self.tied_log_scale = nn.Parameter(torch.full((G,), math.log(cfg.geo_scale_init)))
        self.leaf: nn.Module | None = None  # LeafScorer, attached by onevision.generative.checkpoint.build_generator
        self.apply(self._init_weights)
        for p in (self.visual_pos, self.dec_pos, self.bos):
            nn.init.normal_(p, std=0.02)
        for head in self.heads[:G]:  # the learned term starts at 0: untrained = residual beam search over the SIDs
            nn.init.zeros_(head.weight)
        if self.tied:  # an untrained tied decoder is residual search on the photo's embedding
            for layer in (self.query_head, self.query_mix):
                nn.init.zeros_(layer.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # ------------------------------------------------------------------ geometry
    def set_codebooks(self, codebooks: list) -> None:
        """Copy the tokenizer's residual codebooks (level l: (K_l, D), K_l <= V_l; unused rows stay 0 and the trie never allows them)."""
        G = self.cfg.geo_levels
        if len(codebooks) < G:
            raise ValueError(f"the model decodes {G} geometric levels, the tokenizer has {len(codebooks)} codebooks")
        with torch.no_grad():
            self.codebooks.zero_()
            for level in range(G):
                book = torch.as_tensor(codebooks[level], dtype=torch.float32)
                start = int(self.offsets[level])
                if book.shape[0] > self.cfg.codebook_sizes[level] or book.shape[1] != self.cfg.geo_dim:
                    raise ValueError(f"codebook {level} is {tuple(book.shape)}, the model expects <= {self.cfg.codebook_sizes[level]} x {self.cfg.geo_dim}")
                self.codebooks[start : start + book.shape[0]] = book

    def codebook(self, level: int) -> torch.Tensor:
        start = int(self.offsets[level])
        return self.codebooks[start : start + self.cfg.codebook_sizes[level]]  # (V_l, D)

    def geo_logits(self, resid: torch.Tensor, level: int) -> torch.Tensor:
        """(N, D) residual of the query embedding before ``level`` -> (N, V_l) geometric logits.

        ``scale_l * (||r||^2 - ||r - c_v||^2) = scale_l * (2 r.c_v - ||c_v||^2)``: how much code ``v`` shrinks the
        residual. A beam's summed logits rank prefixes by the distance of the query to their reconstruction."""
        book = self.codebook(level)
        return self.geo_log_scale[level].exp() * (2 * resid @ book.T - (book * book).sum(-1))

    def residuals(self, query: torch.Tensor, sids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (N, D) query embeddings, (N, L) SIDs -> (N, G, D) residual before each geometric level."""
        out, r = [], query
        for level in range(self.cfg.geo_levels):
            out.append(r)
            r = r - self.codebook(level)[sids[:, level]]
        return torch.stack(out, dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ context
    def sid_embedding(self, sids: torch.Tensor) -> torch.Tensor:
        """(..., L) codes (-1 rows allowed) -> (..., C): sum of the levels' code embeddings."""
        valid = sids >= 0
        rows = sids.clamp(min=0) + self.offsets  # (..., L)
        return (self.code_emb(rows) * valid.unsqueeze(-1)).sum(-2)  # (..., C)

    def encode(self, ctx: Context, visual_select: VisualSelect | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Context -> (memory (B, S, C), mask (B, S) True = real token).

        ``visual_select`` (dynamic pruning, onevision.generative.pruning): maps the (pooled) visual
        tokens (B, T', D) to the positions to keep (B, T_keep) long and their mask (B, T_keep) bool;
        the rest never enter the encoder, so its self-attention and every decoder cross-attention
        get shorter. Kept tokens keep their own positional embeddings.
        """
        B, dev = len(ctx), ctx.visual.device
        cfg, types = self.cfg, self.type_emb.weight
        visual = ctx.visual  # (B, T, D)
        if cfg.visual_grid:
            side, D = math.isqrt(visual.shape[1]), visual.shape[2]
            cells = visual.transpose(1, 2).reshape(B, D, side, side)  # (B, D, side, side) row-major grid
            visual = F.adaptive_avg_pool2d(cells, cfg.visual_grid).flatten(2).transpose(1, 2)  # (B, g*g, D)
        if visual_select is None:
            parts = [self.visual_in(visual) + self.visual_pos + types[1]]  # (B, T', C)
            masks = [torch.ones(B, visual.shape[1], dtype=torch.bool, device=dev)]
        else:
            keep, keep_mask = visual_select(visual)  # (B, T_keep), (B, T_keep)
            kept = visual.gather(1, keep.unsqueeze(-1).expand(-1, -1, visual.shape[2]))  # (B, T_keep, D)
            parts = [self.visual_in(kept) + self.visual_pos[keep] + types[1]]  # (B, T_keep, C)
            masks = [keep_mask]
        if self.image_in is not None:
            parts.insert(0, (self.image_in(ctx.image) + types[0]).unsqueeze(1))  # (B, 1, C)
            masks.insert(0, torch.ones(B, 1, dtype=torch.bool, device=dev))
        user = ctx.user if ctx.user is not None else torch.zeros(B, dtype=torch.long, device=dev)
        parts.append((self.user_emb(user) + types[2]).unsqueeze(1))  # (B, 1, C)
        masks.append(torch.ones(B, 1, dtype=torch.bool, device=dev))
        if ctx.history is not None and cfg.history_len > 0:
            # Drop trailing slots no row uses (masked keys change nothing): histories are newest first,
            # so this is most of them in mixed batches and all of them in anonymous ones.
            used = torch.nonzero((ctx.action != ACTION_PAD).any(0))  # (n_used, 1)
            H = int(used.max()) + 1 if len(used) else 0
            if H > 0:
                history, action = ctx.history[:, :H], ctx.action[:, :H]
                hist = self.sid_embedding(history) + self.action_emb(action)  # (B, H, C)
                parts.append(hist + self.recency_emb.weight[:H] + types[3])
                masks.append(action != ACTION_PAD)  # (B, H)
        x = self.enc_drop(torch.cat(parts, dim=1))  # (B, S, C)
        mask = torch.cat(masks, dim=1)  # (B, S)
        for block in self.encoder:
            x = block(x, mask)
        return self.enc_ln(x), mask

    def cross_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys/values, computed once per query."""
        return [block.cross_attn.keys_values(memory) for block in self.decoder]  # L x (B, nh, S, hd)

    # ------------------------------------------------------------------ decoder
    def decoder_inputs(self, sids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (N, L) target SIDs -> (N, L, C) inputs [BOS, code_0, ..., code_{L-2}]."""
        N, L = sids.shape
        bos = self.bos.expand(N, 1, -1)  # (N, 1, C)
        prev = self.code_emb(sids[:, :-1] + self.offsets[:-1])  # (N, L-1, C)
        return torch.cat([bos, prev], dim=1) + self.dec_pos[:L]  # (N, L, C)

    def step_input(self, level: int, prev_codes: torch.Tensor | None, n: int) -> torch.Tensor:
        """Incremental decoding: the input token that predicts ``level`` -> (N, 1, C)."""
        if level == 0:
            x = self.bos.expand(n, -1)  # (N, C)
        else:
            x = self.code_emb(prev_codes + self.offsets[level - 1])  # (N, C)
        return (x + self.dec_pos[level]).unsqueeze(1)  # (N, 1, C)

    def decode(self, x, cross_kv, mem_mask, caches=None) -> torch.Tensor:
        """x: (N, t, C) decoder inputs -> hidden states (N, t, C)."""
        for i, block in enumerate(self.decoder):
            x = block(x, cross_kv[i], mem_mask, None if caches is None else caches[i])
        return self.dec_ln(x)

    def query_shift(self, query: torch.Tensor) -> torch.Tensor:
        """(N, D) aligned query embeddings -> (N, D) the tied head's linear correction of them (once per query)."""
        return self.query_mix(query.float())

    def learned_logits(self, h: torch.Tensor, level: int, *, resid: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                       query: torch.Tensor | None = None, children: torch.Tensor | None = None, nodes=None) -> torch.Tensor:
        """The decoder's own logits of ``level`` from its state ``h`` (N, C).

        Tied head, geometric level: the decoder predicts where the item the shopper wants lies, correcting the photo's
        embedding by ``shift + query_head(h)`` (``shift`` (N, D): :meth:`query_shift` of the photo), and scores each
        child by how close it is: with ``nodes`` (node geometry, onevision.generative.nodes) the ``children`` (N, V)
        node ids by their item centroids (a level that is not ``nodes.exact``: the codebook below, plus ``log n``), ``s_l (2 q_hat.mu - |mu|^2) + log n`` for ``q_hat = query + shift +
        query_head(h)``; otherwise code ``v`` by how much it shrinks the predicted residual ``r_hat = resid + shift +
        query_head(h)``, ``s_l (2 r_hat.c_v - |c_v|^2)``. Plus a free per-code term ``heads[l](h)`` (what no geometry
        says: a shopper's taste for a cluster). Otherwise the free head alone."""
        free = self.heads[level](h)
        if not (self.tied and level < self.cfg.geo_levels):
            return free
        scale, correction = self.tied_log_scale[level].exp(), shift + self.query_head(h)
        if nodes is not None and nodes.exact[level]:
            return nodes.logits(level, query + correction, children, scale) + free
        r_hat = resid + correction
        book = self.codebook(level)
        out = scale * (2 * r_hat @ book.T - (book * book).sum(-1)) + free
        return out if nodes is None else out + nodes.log_count(children, level)

    def level_logits(self, h: torch.Tensor | None, level: int, *, resid: torch.Tensor | None = None, learned_weight: float = 1.0,
                     geo_weight: float = 1.0, shift: torch.Tensor | None = None, query: torch.Tensor | None = None,
                     children: torch.Tensor | None = None, nodes=None, group: int = 1) -> torch.Tensor:
        """Logits of ``level`` for decoding and training (normalise them over the trie's valid children).

        Tied head: ``(1 - w) x geometry + w x`` :meth:`learned_logits` with ``w = learned_weight`` (1: the decoder
        alone, what training fits; 0: geometry alone, then ``h`` may be None and no decoder runs); ``geo_weight`` 0
        forces the decoder alone (an ablation). Untied: ``geo_weight x geometry + learned_weight x heads[l](h)``.
        Geometry: with ``nodes`` the ``children`` (N, V) node ids (``SIDTrie.children``) scored against ``query``
        (N / ``group``, D; ``group`` consecutive rows share a query, e.g. its beams) by their item centroids (:class:`onevision.generative.nodes.NodeGeometry`), else the residual ``resid`` (N, D) against the
        level's codebook. Levels past the geometric ones: the free head."""
        if level >= self.cfg.geo_levels:
            return self.heads[level](h)  # (N, V_level)

        def geometry() -> torch.Tensor:
            if nodes is None:
                return self.geo_logits(resid, level)
            if nodes.exact[level]:
                return nodes.logits(level, query, children, self.geo_log_scale[level].exp(), group=group)
            return self.geo_logits(resid, level) + nodes.log_count(children, level)

        if self.tied:
            w = 1.0 if geo_weight == 0.0 else float(learned_weight)
            out = 0.0
            if w < 1.0:
                out = (1.0 - w) * geo_weight * geometry()
            if w > 0.0:
                beams = query if group == 1 or query is None else query.repeat_interleave(group, 0)
                out = out + w * self.learned_logits(h, level, resid=resid, shift=shift, query=beams, children=children, nodes=nodes)
            return out
        out = geo_weight * geometry()
        if learned_weight and h is not None:
            out = out + learned_weight * self.heads[level](h)
        return out

    @property
    def trained_levels(self) -> int:
        """Levels with a training loss: the geometric ones of a tied decoder (the disambiguation level is never
        decoded, the trie expands it), every level otherwise."""
        return self.cfg.geo_levels if self.tied else self.cfg.n_levels

    def logits_for(self, memory, mem_mask, *, sids, cross=None, query=None, children=None, nodes=None) -> list[torch.Tensor]:
        """Teacher-forced logits per level: list of L tensors (N, V_l); memory rows align with sids rows.

        ``cross``: precomputed ``cross_kv`` rows (then ``memory`` is not read); ``query`` (N, D): the
        aligned query embeddings that geometric levels read; ``nodes`` and ``children`` (per level, the (N, V_l)
        child node ids of each SID's prefix, onevision.generative.nodes.trie_paths): node geometry."""
        cross = self.cross_kv(memory) if cross is None else cross
        h = self.decode(self.decoder_inputs(sids), cross, mem_mask)  # (N, L, C)
        G = self.cfg.geo_levels
        resid = self.residuals(query, sids) if G else None  # (N, G, D); node geometry reads it at levels that are not exact
        shift = self.query_shift(query) if self.tied else None
        return [self.level_logits(h[:, level], level, resid=None if resid is None or level >= G else resid[:, level], shift=shift, query=query,
                                  children=None if nodes is None or level >= G else children[level], nodes=nodes)
                for level in range(self.cfg.n_levels)]

    def sequence_log_prob(self, memory, mem_mask, sids, cross=None, query=None) -> torch.Tensor:
        """log p(sid | context) = sum over the trained levels of log p(code_l | context, code_<l) -> (N,), each level
        a softmax over every code (the untied decoders' DPO and exhaustive scoring; the tied decoder's trie-normalised
        scores are geosearch.candidate_prefix_scores)."""
        logits = self.logits_for(memory, mem_mask, sids=sids, cross=cross, query=query)
        return sum(F.log_softmax(lg.float(), dim=-1).gather(1, sids[:, lvl : lvl + 1]).squeeze(1) for lvl, lg in enumerate(logits[: self.trained_levels]))

    def forward(self, ctx: Context, targets: torch.Tensor | None = None, *, weights: torch.Tensor | None = None,
                allowed: list[torch.Tensor] | None = None, children: list[torch.Tensor] | None = None, nodes=None):
        """ctx: B contexts; targets: (B, L) SIDs -> (logits list of (B, V_l), loss or None).

        loss: the (optionally weighted) mean over examples of the SID's negative log-likelihood, summed over
        :attr:`trained_levels` (next-level prediction from the SID's prefix), each level's softmax over the
        trie's valid children when ``allowed`` (``SIDTrie.path_masks``) is given; ``nodes`` and ``children``: node
        geometry (onevision.generative.nodes.trie_paths gives ``children``; ``allowed`` is then ``children >= 0``).
        """
        if targets is None:  # level-0 distribution only: generation goes through decode.py
            memory, mask = self.encode(ctx)
            n = memory.shape[0]
            h = self.decode(self.step_input(0, None, n), self.cross_kv(memory), mask)  # (B, 1, C)
            shift = self.query_shift(ctx.image) if self.tied else None
            return [self.level_logits(h[:, 0], 0, resid=ctx.image, shift=shift)], None
        memory, mask = self.encode(ctx)
        logits = self.logits_for(memory, mask, sids=targets, query=ctx.image, children=children, nodes=nodes)
        nll = -sum(log_softmax_over(lg, None if allowed is None else allowed[lvl]).gather(1, targets[:, lvl : lvl + 1]).squeeze(1)
                   for lvl, lg in enumerate(logits[: self.trained_levels]))  # (B,)
        if weights is None:
            return logits, nll.mean()
        return logits, (nll * weights).sum() / weights.sum().clamp(min=1e-12)


def log_softmax_over(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Log-softmax of (N, V) logits over the ``allowed`` (N, V) codes (all when None); the one normalisation that
    training, exhaustive scoring and constrained beam search share. Disallowed codes get -inf."""
    logits = logits.float()
    if allowed is None:
        return F.log_softmax(logits, dim=-1)
    return F.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside the block, its training mode back after. Both walk every module (~0.85 ms on the
    small-profile model, a sixth of a batch-1 search), so a model already in eval mode is left untouched."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no decay on biases, norms, embeddings' positions (1-D params), as in nanoGPT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
