"""What single-network methods (the MDLM teacher, the AR baseline) share: one part named "model"."""

from __future__ import annotations

import torch

from .. import runs


class SingleModelMethod:
    eval_part = "model"

    def step(self, x: torch.Tensor, generator: torch.Generator, ctx) -> dict:
        part = ctx.parts["model"]
        with ctx.autocast():
            loss, _ = self.loss(part.wrapped, x, generator, ctx.global_batch, ctx.dist.rank, ctx.dist.world)
        grad_norm = ctx.update("model", loss)
        return {"loss": float(ctx.all_mean(loss.detach())), "grad_norm": grad_norm}

    def exports(self) -> dict:
        """Files written beside every checkpoint: name -> (part, state-dict getter); EMA weights are swapped in."""
        return {runs.WEIGHTS: ("model", lambda m: m.state_dict())}
