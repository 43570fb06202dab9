"""q(xi | x0): the encoder of a latent-variable student (distill method "latent").

A copy of the teacher's embedding and first `blocks` blocks reads the clean text; the hidden states are
mean-pooled over positions and mapped to a diagonal Gaussian over the student's noise input xi. The head
starts at zero, so q starts as the prior N(0, I) and the KL term at 0.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .dit import DIT


class SequenceEncoder(nn.Module):
    def __init__(self, teacher: DIT, dim: int, blocks: int):
        super().__init__()
        if not 1 <= blocks <= len(teacher.blocks):
            raise ValueError(f"encoder blocks must be in [1, {len(teacher.blocks)}], not {blocks}")
        backbone = copy.deepcopy(teacher)
        self.config = copy.deepcopy(teacher.config)
        self.config.time_conditioning = False  # the text is clean: sigma is 0
        self.vocab_embed = backbone.vocab_embed
        self.sigma_map = backbone.sigma_map
        self.rotary_emb = backbone.rotary_emb
        self.blocks = nn.ModuleList(list(backbone.blocks)[:blocks])
        self.head = nn.Linear(self.config.hidden_dim, 2 * dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L] token ids -> (mean [B, dim], log-variance [B, dim])."""
        h, _ = DIT.hidden_states(self, x, torch.zeros(x.shape[0], device=x.device))
        mu, logvar = self.head(h.float().mean(1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 4.0)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row [B], nats."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)
