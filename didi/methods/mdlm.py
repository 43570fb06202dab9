"""MDLM teacher training: the continuous-time NELBO of MDLM (Sahoo et al. 2024) with antithetic time sampling."""

from __future__ import annotations

import torch
import torch.distributed

from ..config import RunConfig
from ..diffusion import Kept, LogLinearSchedule, nelbo_terms, nelbo_to_ppl, sample_times
from .base import SingleModelMethod


class MDLM(SingleModelMethod):
    name = "mdlm"

    def __init__(self, cfg: RunConfig, mask_id: int, kept: Kept | None = None):
        """kept: what is never masked and never scored (protein rows: BOS, EOS and PAD, so the model always sees
        the length it fills in; text rows: the first position)."""
        self.cfg = cfg
        self.mask_id = mask_id
        self.kept = kept or Kept()
        self.schedule = LogLinearSchedule(cfg.diffusion.eps)

    def terms(self, model, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Per-token NELBO terms and the number of scored (not kept) tokens."""
        if self.kept:
            keep = self.kept(x)
            noise = noise.masked_fill(keep, 0.0)  # noise 0 < alpha_t: the token stays
            return nelbo_terms(model, x, t, noise, self.schedule, self.mask_id), int((~keep).sum())
        return nelbo_terms(model, x, t, noise, self.schedule, self.mask_id), x.numel()

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
        terms, count = self.terms(model, x, t, noise)
        if world > 1 and self.kept:
            # protein rows score different numbers of tokens on each rank: normalize by the global count,
            # times world because DDP averages the ranks' gradients, so the step matches one process
            n = torch.tensor(float(count), dtype=torch.float64, device=x.device)
            torch.distributed.all_reduce(n)
            loss = terms.sum() * world / n.clamp_min(1).to(terms.dtype)
        else:
            loss = terms.sum() / max(count, 1)
        return loss, {"nelbo": loss.detach()}

    @torch.no_grad()
    def validate(self, model, batches, seed: int) -> dict:
        """Validation NELBO per token (nats) and the perplexity upper bound exp(NELBO)."""
        gen = torch.Generator().manual_seed(seed)
        total, count = 0.0, 0
        for x in batches:
            t, noise = self.draw(x.shape[0], x.shape[1], gen, 0, 1, x.device)
            terms, n = self.terms(model, x, t, noise)
            total += float(terms.double().sum())
            count += n
        nelbo = total / max(count, 1)
        return {"val_nelbo": nelbo, "val_ppl_bound": nelbo_to_ppl(nelbo), "val_tokens": count}
