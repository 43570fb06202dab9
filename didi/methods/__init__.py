"""Training methods: small objects the trainer calls (`loss(model, batch, ...)`), one per algorithm."""

from __future__ import annotations

from ..config import RunConfig
from ..errors import DidiError


def make_method(cfg: RunConfig, tokenizer):
    if cfg.model.arch == "dit":
        from ..diffusion import Kept
        from .mdlm import MDLM

        return MDLM(cfg, tokenizer.mask_id, Kept.for_run(cfg.data, tokenizer))
    if cfg.model.arch == "ar":
        from .ar import AR

        return AR(cfg, tokenizer)
    raise DidiError(f"no training method for model.arch '{cfg.model.arch}'")
