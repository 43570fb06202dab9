"""Autoregressive baseline training: next-token NLL of a causal transformer on the same packed blocks."""

from __future__ import annotations

import math

import torch

from ..config import RunConfig
from .base import SingleModelMethod


class AR(SingleModelMethod):
    name = "ar"

    def __init__(self, cfg: RunConfig, tokenizer):
        self.cfg = cfg
        self.bos_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        self.ignore_id = tokenizer.pad_id if cfg.data.domain == "protein" else None  # padding after EOS
        # text rows: EOS, the text, EOS, then EOS padding: the padding after the closing EOS is not a target
        text_rows = cfg.data.domain == "text" and cfg.data.layout == "rows"
        self.end_id = tokenizer.eos_id if text_rows else None

    def loss(self, model, x: torch.Tensor, generator: torch.Generator, global_batch: int, rank: int = 0,
             world: int = 1) -> tuple[torch.Tensor, dict]:
        from ..nn.ar import ar_loss

        loss = ar_loss(model, x, self.bos_id, self.ignore_id, self.end_id)
        return loss, {"nll": loss.detach()}

    @torch.no_grad()
    def validate(self, model, batches, seed: int) -> dict:
        from ..nn.ar import ar_loss, scored_targets

        total, count = 0.0, 0
        for x in batches:
            n = int(scored_targets(x, self.ignore_id, self.end_id).sum())
            total += float(ar_loss(model, x, self.bos_id, self.ignore_id, self.end_id)) * n
            count += n
        nll = total / max(count, 1)
        return {"val_nll": nll, "val_ppl": math.exp(min(nll, 50.0)), "val_tokens": count}
