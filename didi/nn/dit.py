"""The MDLM/DUO diffusion transformer (DiT), with the official parameter names and shapes.

Names are kept exactly so official `model.safetensors` files load without renaming:
vocab_embed.embedding, sigma_map.mlp.{0,2}, rotary_emb.inv_freq, blocks.i.{norm1,norm2,attn_qkv,
attn_out,mlp.0,mlp.2,adaLN_modulation}, output_layer.{norm_final,adaLN_modulation,linear}.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig


class LayerNorm(nn.Module):
    """LayerNorm without bias, computed in float32 (as the official DiT does under bf16)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.layer_norm(x.float(), [self.dim])
        return x * self.weight


class EmbeddingLayer(nn.Module):
    """A raw [V+1, H] parameter; accepts token ids or a probability vector per position."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():  # soft input: [B, L, V+1] probabilities (RGAS differentiates through it)
            return x.to(self.embedding.dtype) @ self.embedding
        return self.embedding[x]


class TimestepEmbedder(nn.Module):
    """256-dim sinusoidal features of sigma -> Linear -> SiLU -> Linear."""

    def __init__(self, cond_dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
        args = sigma.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))
        self._cache: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            # built as ordinary tensors even when first called under inference_mode (the samplers), so a later
            # training forward can save them for backward
            with torch.inference_mode(False), torch.no_grad():
                t = torch.arange(seq_len, device=device, dtype=torch.float32)
                freqs = torch.outer(t, self.inv_freq.to(device).float())
                emb = torch.cat([freqs, freqs], dim=-1)  # rotate-half (GPT-NeoX / flash-attn non-interleaved) layout
                self._cache = (seq_len, device, emb.cos()[None, None], emb.sin()[None, None])
        return self._cache[2], self._cache[3]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DDiTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1):
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
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim, bias=True)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        mod = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        qkv = self.attn_qkv(h).view(B, L, 3, self.n_heads, H // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = apply_rotary(qkv[0], cos, sin), apply_rotary(qkv[1], cos, sin), qkv[2]
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        attn = attn.transpose(1, 2).reshape(B, L, H)
        x = x + gate_msa * F.dropout(self.attn_out(attn), self.dropout, self.training)
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x + gate_mlp * F.dropout(self.mlp(h), self.dropout, self.training)


class DDitFinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim, bias=True)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B, L, H] with c [B, cond], or chosen positions x [N, H] with their rows' c [N, cond]."""
        mod = self.adaLN_modulation(c)
        shift, scale = (mod[:, None] if x.dim() == 3 else mod).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DIT(nn.Module):
    """Bidirectional transformer over [B, L] token ids (or [B, L, V+1] probabilities) -> [B, L, V+1] logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.hidden_dim % cfg.n_heads:
            raise ValueError(f"hidden_dim {cfg.hidden_dim} is not divisible by n_heads {cfg.n_heads}")
        self.config = cfg
        self.vocab_embed = EmbeddingLayer(cfg.hidden_dim, cfg.vocab_size)
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.rotary_emb = Rotary(cfg.hidden_dim // cfg.n_heads)
        self.blocks = nn.ModuleList(
            [DDiTBlock(cfg.hidden_dim, cfg.n_heads, cfg.cond_dim, dropout=cfg.dropout) for _ in range(cfg.n_blocks)]
        )
        self.output_layer = DDitFinalLayer(cfg.hidden_dim, cfg.vocab_size, cfg.cond_dim)
        # a student's own randomness (model.noise_dim > 0): xi [B, noise_dim] ~ N(0, I) per sequence, added to the
        # conditioning through a linear map; every block's modulation sees it (see `add_noise_input`)
        self.noise_map = nn.Linear(cfg.noise_dim, cfg.cond_dim, bias=False) if cfg.noise_dim else None

    def add_noise_input(self, dim: int, init_std: float, generator: torch.Generator | None = None) -> DIT:
        """Give this model (a copy of a teacher) a per-sequence noise input of `dim` dimensions, its map drawn with
        entries N(0, (init_std / sqrt(dim))^2), so each conditioning coordinate moves by about init_std. A zero map
        would leave the student exactly the teacher but is a stationary point of any objective that averages over
        the noise (the gradient of the map is E[xi] ... = 0), hence a small random one."""
        if self.noise_map is not None:
            raise ValueError("this model already has a noise input")
        self.config.noise_dim = dim
        p = next(self.parameters())
        self.noise_map = nn.Linear(dim, self.config.cond_dim, bias=False).to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            w = torch.randn(self.noise_map.weight.shape, generator=generator) * (init_std / math.sqrt(dim))
            self.noise_map.weight.copy_(w)
        return self

    def hidden_states(self, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run embedding + blocks; returns (hidden [B, L, H], conditioning c [B, cond]). noise: [B, noise_dim] for a
        model with a noise input (None: the zero vector, the noise distribution's mean); refused otherwise."""
        if not self.config.time_conditioning:
            sigma = torch.zeros_like(sigma)
        h = self.vocab_embed(x)
        c = F.silu(self.sigma_map(sigma))
        if noise is not None:
            if self.noise_map is None:
                raise ValueError("this model has no noise input (model.noise_dim = 0)")
            c = c + self.noise_map(noise.to(c.dtype))
        cos, sin = self.rotary_emb(h.shape[1], h.device)
        for block in self.blocks:
            h = block(h, cos, sin, c)
        return h, c

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        h, c = self.hidden_states(x, sigma, noise)
        return self.output_layer(h, c)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
