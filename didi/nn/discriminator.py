"""The DiDi-Instruct discriminator: a DiT backbone copy whose output layer is a spectral-norm head.

State-dict names match the released `discriminator.safetensors`: the backbone's names, with
`output_layer.main.0.{weight_orig,weight_u,weight_v,bias}` and `output_layer.main.2.*`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils import spectral_norm

from .dit import DIT


class DiscriminatorHead(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        # the old hook API stores weight_orig / weight_u / weight_v, as the released checkpoint does
        self.main = nn.Sequential(spectral_norm(nn.Linear(hidden, hidden)), nn.SiLU(),
                                  spectral_norm(nn.Linear(hidden, 1)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.main(h).squeeze(-1)


class Discriminator(nn.Module):
    """Per-token logit D(z, sigma) [B, L]; input ids [B, L] or probabilities [B, L, V+1]."""

    def __init__(self, backbone: DIT):
        super().__init__()
        self.config = backbone.config
        self.vocab_embed = backbone.vocab_embed
        self.sigma_map = backbone.sigma_map
        self.rotary_emb = backbone.rotary_emb
        self.blocks = backbone.blocks
        self.output_layer = DiscriminatorHead(backbone.config.hidden_dim)

    @classmethod
    def from_teacher(cls, teacher: DIT, trainable_blocks: int = 4, time_conditioning: bool = True) -> Discriminator:
        """A copy of the teacher's backbone; only its last `trainable_blocks` blocks and the head train."""
        backbone = copy.deepcopy(teacher)
        backbone.config = copy.deepcopy(teacher.config)
        backbone.config.time_conditioning = time_conditioning
        disc = cls(backbone)
        n = len(disc.blocks)
        for name, p in disc.named_parameters():
            trainable = name.startswith("output_layer.") or any(
                name.startswith(f"blocks.{i}.") for i in range(max(0, n - trainable_blocks), n))
            p.requires_grad_(trainable)
        return disc

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, _ = DIT.hidden_states(self, z, sigma)
        return self.output_layer(h)
