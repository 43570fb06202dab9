"""Autoregressive baseline: a pre-norm causal transformer (DiT size class, rotary, no time input) sampled
with a KV cache, plus its next-token loss."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..sampling import draw_tokens
from .dit import LayerNorm, Rotary, apply_rotary


class KVCache:
    """Preallocated keys/values per block, [B, n_heads, capacity, head_dim]; allocated on first write so the
    storage takes the dtype the attention actually produces (bf16 under autocast)."""

    def __init__(self, n_blocks: int, capacity: int):
        self.capacity = capacity
        self.k: list[torch.Tensor | None] = [None] * n_blocks
        self.v: list[torch.Tensor | None] = [None] * n_blocks
        self.length = 0  # positions filled so far

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, nh, T, hd = k.shape
        if start + T > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; cannot write {start}..{start + T - 1}")
        if self.k[i] is None:
            self.k[i] = k.new_zeros(B, nh, self.capacity, hd)
            self.v[i] = v.new_zeros(B, nh, self.capacity, hd)
        self.k[i][:, :, start:start + T] = k
        self.v[i][:, :, start:start + T] = v
        return self.k[i][:, :, :start + T], self.v[i][:, :, :start + T]


class CausalBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim, bias=True),
        )
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                index: int = 0, start: int = 0) -> torch.Tensor:
        B, T, H = x.shape
        qkv = self.attn_qkv(self.norm1(x)).view(B, T, 3, self.n_heads, H // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = apply_rotary(qkv[0], cos, sin), apply_rotary(qkv[1], cos, sin), qkv[2]
        mask, causal = None, True
        if cache is not None:
            k, v = cache.write(index, k, v, start)
            if T == 1:  # a single new query may see every cached key
                causal = False
            elif start > 0:  # SDPA's is_causal aligns top-left, wrong when queries start after cached keys
                causal = False
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        p = self.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, dropout_p=p,
                                              is_causal=causal)
        x = x + F.dropout(self.attn_out(attn.transpose(1, 2).reshape(B, T, H)), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


class CausalTransformer(nn.Module):
    """Causal transformer over [B, L] token ids -> [B, L, V] next-token logits (V = cfg.vocab_size)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.hidden_dim % cfg.n_heads:
            raise ValueError(f"hidden_dim {cfg.hidden_dim} is not divisible by n_heads {cfg.n_heads}")
        self.config = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.hidden_dim)
        self.rotary_emb = Rotary(cfg.hidden_dim // cfg.n_heads)
        self.blocks = nn.ModuleList(
            [CausalBlock(cfg.hidden_dim, cfg.n_heads, dropout=cfg.dropout) for _ in range(cfg.n_blocks)]
        )
        self.norm_final = LayerNorm(cfg.hidden_dim)
        self.lm_head = nn.Linear(cfg.hidden_dim, cfg.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 initialisation; residual output projections scaled down by depth so the stream stays O(1)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            nn.init.normal_(block.attn_out.weight, std=0.02 / math.sqrt(2 * len(self.blocks)))
            nn.init.normal_(block.mlp[2].weight, std=0.02 / math.sqrt(2 * len(self.blocks)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Full causal pass; `sigma` is ignored (same call signature as the DiT)."""
        h = self.tok_embed(x)
        cos, sin = self.rotary_emb(x.shape[1], x.device)
        for block in self.blocks:
            h = block(h, cos, sin)
        return self.lm_head(self.norm_final(h))

    def new_cache(self, capacity: int | None = None) -> KVCache:
        """An empty cache; default capacity is cfg.length + 1 (a BOS seed plus a full-length sequence)."""
        return KVCache(len(self.blocks), capacity if capacity is not None else self.config.length + 1)

    def forward_cached(self, x: torch.Tensor, cache: KVCache | None, start_pos: int) -> tuple[torch.Tensor, KVCache]:
        """Feed tokens x [B, T] at positions start_pos..start_pos+T-1, attending to cached keys before them.

        Returns logits [B, T, V] and the cache (updated in place; a new one if `cache` is None).
        """
        T = x.shape[1]
        if cache is None:
            cache = self.new_cache(max(self.config.length + 1, start_pos + T))
        if start_pos > cache.length:
            raise ValueError(f"start_pos {start_pos} leaves a gap: the cache holds {cache.length} positions")
        if start_pos + T > cache.capacity:
            raise ValueError(f"KV cache holds {cache.capacity} positions; cannot feed {start_pos}..{start_pos + T - 1}")
        # rotary at the full capacity, so its own one-entry cache is hit on every decoding step
        cos, sin = self.rotary_emb(cache.capacity, x.device)
        cos, sin = cos[:, :, start_pos:start_pos + T], sin[:, :, start_pos:start_pos + T]
        h = self.tok_embed(x)
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, cache, i, start_pos)
        cache.length = start_pos + T
        return self.lm_head(self.norm_final(h)), cache

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@torch.inference_mode()
def _generate(model: CausalTransformer, batch_size: int, length: int, *, bos_id: int, mask_id: int,
              prefix: torch.Tensor | None, temperature: float, top_p: float, generator: torch.Generator | None,
              use_cache: bool) -> tuple[torch.Tensor, int]:
    device = next(model.parameters()).device
    seq = torch.full((batch_size, length + 1), bos_id, dtype=torch.long, device=device)
    k = 0
    if prefix is not None:
        prefix = prefix.to(device=device, dtype=torch.long)
        if prefix.dim() == 1:
            prefix = prefix[None]
        prefix = prefix.expand(batch_size, prefix.shape[1])
        if prefix.shape[1] > length:
            raise ValueError(f"prefix of {prefix.shape[1]} tokens is longer than length {length}")
        k = int((prefix >= 0).all(0).long().cumprod(0).sum())  # the leading positions every row gives
        seq[:, 1:k + 1] = prefix[:, :k]
    was_training = model.training
    model.eval()
    calls = 0
    cache = model.new_cache(length + 1) if use_cache else None
    fed = 0  # positions of seq already in the cache
    try:
        for pos in range(k + 1, length + 1):  # pos: index in seq of the token drawn this step
            if use_cache:
                logits, cache = model.forward_cached(seq[:, fed:pos], cache, fed)
                fed = pos
            else:
                logits = model(seq[:, :pos])
            calls += 1
            drawn = draw_tokens(logits[:, -1], mask_id, temperature, top_p, generator)  # never the mask
            if prefix is not None and pos <= prefix.shape[1]:  # a longer prefix of some rows: theirs is kept
                given = prefix[:, pos - 1]
                drawn = torch.where(given >= 0, given, drawn)
            seq[:, pos] = drawn
    finally:
        model.train(was_training)
    return seq[:, 1:], calls


def generate(model: CausalTransformer, batch_size: int, length: int, *, bos_id: int, mask_id: int,
             prefix: torch.Tensor | None = None, temperature: float = 1.0, top_p: float = 1.0,
             generator: torch.Generator | None = None, use_cache: bool = True) -> tuple[torch.Tensor, int]:
    """Sample [batch_size, length] tokens after a BOS seed (BOS not returned), one token per forward call.

    prefix [B, k] (or [k] / [1, k], broadcast) is fed in one call and kept as the first k output tokens; rows may
    have prefixes of different lengths (-1 after a shorter one): the part all rows share is fed in one call, and
    each row's own tokens are kept where it has them (drawn for the others in the same calls).
    Returns (tokens, forward calls): length - k calls either way (k: the shared part); the cached path feeds only
    the newest token, the uncached path reruns the whole sequence, and both draw identical noise so give the same
    tokens.
    Runs under `torch.inference_mode` (against no_grad: -3 to +16 % in three runs of bench/speed.py).
    """
    tokens, calls = _generate(model, batch_size, length, bos_id=bos_id, mask_id=mask_id, prefix=prefix,
                              temperature=temperature, top_p=top_p, generator=generator, use_cache=use_cache)
    return tokens.clone(), calls  # an ordinary tensor again, usable in autograd


def ar_loss(model: nn.Module, x: torch.Tensor, bos_id: int, ignore_id: int | None = None,
            end_id: int | None = None) -> torch.Tensor:
    """Mean next-token NLL in nats/token: input [bos] + x[:, :-1], target x (targets equal to `ignore_id`,
    e.g. protein padding, are not scored; with `end_id`, text rows: the targets after the EOS that ends a row's text,
    the first `end_id` after position 0, are padding and not scored either, nor is the anchor EOS at position 0: it
    is always given, and a model without absolute positions cannot tell "BOS" from "BOS EOS", so scoring it
    teaches EOS as a first word)."""
    inp = torch.cat([torch.full_like(x[:, :1], bos_id), x[:, :-1]], dim=1)
    logits = model(inp)
    target = x.masked_fill(~scored_targets(x, ignore_id, end_id), -100)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


def scored_targets(x: torch.Tensor, ignore_id: int | None = None, end_id: int | None = None) -> torch.Tensor:
    """[B, L] bool: the targets `ar_loss` scores (see there)."""
    keep = torch.ones_like(x, dtype=torch.bool) if ignore_id is None else x != ignore_id
    if end_id is not None:
        ends = (x == end_id) & (torch.arange(x.shape[1], device=x.device) > 0)
        keep &= (ends.long().cumsum(1) - ends.long()) == 0  # not strictly after the text's closing EOS
        keep[:, 0] &= x[:, 0] != end_id  # nor the anchor
    return keep
