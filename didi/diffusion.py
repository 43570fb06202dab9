"""The masked diffusion process (MDLM, Sahoo et al. 2024): log-linear schedule, masking, SUBS, continuous-time NELBO."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEG_INF = -1e6  # finite stand-in for -inf: keeps log-softmax free of NaN (inf - inf)


class LogLinearSchedule:
    """alpha_t = 1 - (1 - eps) t; sigma_t = -log(alpha_t) is the network's time input."""

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t: torch.Tensor | float):
        return 1 - (1 - self.eps) * t

    def dalpha(self, t: torch.Tensor | float):
        return -(1 - self.eps) * (torch.ones_like(t) if torch.is_tensor(t) else 1.0)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """alpha'_t / (1 - alpha_t): about -1/t for the log-linear schedule."""
        return self.dalpha(t) / (1 - self.alpha(t))


def sample_times(n: int, eps: float, antithetic: bool, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """t in [eps, 1]; antithetic draws are stratified as (u + i/n) mod 1 with one shared u."""
    if antithetic:
        u = torch.rand(1, generator=generator, dtype=torch.float64)
        r = (u + torch.arange(n, dtype=torch.float64) / n) % 1.0
    else:
        r = torch.rand(n, generator=generator, dtype=torch.float64)
    return ((1 - eps) * r + eps).float().to(device)


class Kept:
    """What the diffusion never masks: tokens with these ids (protein rows: BOS, EOS, PAD, so the length is given)
    and/or the first position (text rows: the EOS that starts every row anchors the positions after it)."""

    def __init__(self, ids: tuple[int, ...] = (), first: bool = False):
        self.ids, self.first = tuple(ids), first

    def __bool__(self) -> bool:
        return bool(self.ids) or self.first

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(x, dtype=torch.bool)
        for i in self.ids:
            keep |= x == i
        if self.first:
            keep[:, 0] = True
        return keep

    @classmethod
    def for_run(cls, data_cfg, tokenizer) -> Kept:
        if data_cfg.domain == "protein":
            return cls(tuple(i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if i is not None))
        return cls(first=data_cfg.layout == "rows")


def mask_tokens(x: torch.Tensor, alpha: torch.Tensor, mask_id: int, noise: torch.Tensor) -> torch.Tensor:
    """Keep each token with probability alpha (per row), else replace it by the mask.

    `noise` is a uniform [B, L] tensor drawn by the caller, so DDP ranks can slice one global draw.
    """
    return torch.where(noise < alpha[:, None], x, torch.full_like(x, mask_id))


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterization of log p(x0 | z_t).

    The mask logit is removed (the model never predicts the mask) and, at positions where z_t is
    not masked, the distribution is a one-hot on the observed token (carry-over unmasking).
    """
    logits = logits.float().clone()
    logits[..., mask_id] = NEG_INF
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    unmasked = z != mask_id
    if unmasked.any():
        carry = torch.full_like(logp[unmasked], NEG_INF)
        carry.scatter_(-1, z[unmasked][:, None], 0.0)
        logp[unmasked] = carry
    return logp


def masked_log_probs(logits: torch.Tensor, mask_id: int, inplace: bool = False) -> torch.Tensor:
    """log p(x0 | z) at masked positions only: log-softmax with the mask logit removed. logits: [N, V+1].

    inplace: `logits` is a tensor the caller no longer needs (such as `logits[masked]`, a fresh copy): its mask
    column is overwritten instead of copying the whole tensor (autograd allows it: indexing keeps no output).
    """
    x = logits.float()
    if x is logits and not inplace:
        x = x.clone()
    x[..., mask_id] = NEG_INF
    return F.log_softmax(x, dim=-1)


def nelbo_terms(model, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: LogLinearSchedule,
                mask_id: int) -> torch.Tensor:
    """Per-token NELBO contributions [B, L]: -(alpha'/(1-alpha)) ... = weight * log p at masked positions.

    Only masked positions contribute; the output layer still runs on all positions because its
    adaLN modulation is per sequence, but the log-softmax runs only where it matters.
    """
    alpha = schedule.alpha(t)
    z = mask_tokens(x, alpha, mask_id, noise)
    logits = model(z, schedule.sigma(t))
    masked = z == mask_id
    terms = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    if masked.any():
        logp = masked_log_probs(logits[masked], mask_id, inplace=True)
        logp_true = logp.gather(-1, x[masked][:, None]).squeeze(-1)
        weight = schedule.loss_weight(t)[:, None].expand_as(x)[masked]
        terms[masked] = weight * logp_true  # weight < 0, logp <= 0: a non-negative NELBO term
    return terms


def nelbo_to_ppl(nelbo_per_token: float) -> float:
    return math.exp(min(nelbo_per_token, 50.0))
