"""Training methods: small objects the trainer calls (`loss(model, batch, ...)`), one per algorithm."""

from __future__ import annotations

from ..config import RunConfig
from ..errors import DidiError


def make_method(cfg: RunConfig, tokenizer):
    if cfg.model.arch == "dit":
        from .mdlm import MDLM

        keep = ()
        if cfg.data.domain == "protein":
            keep = tuple(i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if i is not None)
        return MDLM(cfg, tokenizer.mask_id, keep)
    if cfg.model.arch == "ar":
        from .ar import AR

        return AR(cfg, tokenizer)
    raise DidiError(f"no training method for model.arch '{cfg.model.arch}'")
