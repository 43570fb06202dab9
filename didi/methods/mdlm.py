"""MDLM teacher training: the continuous-time NELBO of spec §1 with antithetic time sampling."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..diffusion import LogLinearSchedule, nelbo_terms, nelbo_to_ppl, sample_times
from .base import SingleModelMethod


class MDLM(SingleModelMethod):
    name = "mdlm"

    def __init__(self, cfg: RunConfig, mask_id: int):
        self.cfg = cfg
        self.mask_id = mask_id
        self.schedule = LogLinearSchedule(cfg.diffusion.eps)

    def draw(self, global_batch: int, length: int, generator: torch.Generator, rank: int, world: int, device):
        """Times and masking noise for the whole global batch, then this rank's slice.

        Drawing globally makes a DDP step identical to a single-process step on the same batch.
        """
        t = sample_times(global_batch, self.cfg.diffusion.eps, self.cfg.diffusion.antithetic, generator)
        noise = torch.rand(global_batch, length, generator=generator)
        per = global_batch // world
        sl = slice(rank * per, (rank + 1) * per)
        return t[sl].to(device), noise[sl].to(device)

    def loss(self, model, x: torch.Tensor, generator: torch.Generator, global_batch: int, rank: int = 0,
             world: int = 1) -> tuple[torch.Tensor, dict]:
        t, noise = self.draw(global_batch, x.shape[1], generator, rank, world, x.device)
        terms = nelbo_terms(model, x, t, noise, self.schedule, self.mask_id)
        loss = terms.mean()
        return loss, {"nelbo": loss.detach()}

    @torch.no_grad()
    def validate(self, model, batches, seed: int) -> dict:
        """Validation NELBO per token (nats) and the perplexity upper bound exp(NELBO)."""
        gen = torch.Generator().manual_seed(seed)
        total, count = 0.0, 0
        for x in batches:
            t, noise = self.draw(x.shape[0], x.shape[1], gen, 0, 1, x.device)
            terms = nelbo_terms(model, x, t, noise, self.schedule, self.mask_id)
            total += float(terms.double().sum())
            count += terms.numel()
        nelbo = total / max(count, 1)
        return {"val_nelbo": nelbo, "val_ppl_bound": nelbo_to_ppl(nelbo), "val_tokens": count}
