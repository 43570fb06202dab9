"""A latent student's code for a prompt: xi given the tokens a user fixed.

A student with a per-sequence noise input (a latent student and the runs started from it) writes the plan of a
text from its code xi; unprompted, xi comes from the run's prior. Given a prompt (any clamped tokens), a code drawn
from the prior carries another text's plan (names, places) that the prompt contradicts. Two ways to draw xi from
(an approximation of) its posterior given the clamped tokens:

- "exemplar": the prior's components weighted by how well each explains the clamped tokens. Component k's score is
  log w_k + sum over clamped positions i of log p(x_i | every free position masked, xi = mean_k): one forward pass
  per component, shared by every prompt of a batch; a component is drawn by its posterior weight, then xi from its
  Gaussian, as the prior does. For the exemplar prior (one component per training text) this picks training texts
  whose plan fits the prompt.
- "encoder": the latent student's encoder q(xi | x) read on the row with the free positions masked. The encoder
  was trained on whole texts, so this asks it something it never saw.
- "prior": ignore the prompt (what sampling did before).

`Pipeline.sample(prefix=...)` uses `prompt_code` ("exemplar" by default); an unprompted call draws from the prior
as before, bit for bit.
"""

from __future__ import annotations

import math

import torch

from .errors import DidiError

PROMPT_CODES = ("exemplar", "encoder", "prior")
EXEMPLAR_SHARPNESS = 1.0  # the exponent on the factorized likelihood (`exemplar_codes`)


def clamped_positions(clamp: torch.Tensor, anchored: bool) -> torch.Tensor:
    """[B, L] bool: the positions a user fixed (`anchored`: a text-rows run's position 0 holds the EOS every row
    starts with, which says nothing about the text)."""
    fixed = clamp >= 0
    if anchored:
        fixed[:, 0] = False
    return fixed


class ExemplarScorer:
    """Scores of a prior's components against clamped tokens (`scores`), with the per-component log-probabilities
    kept between calls: they depend only on the state the rows are scored from (the clamp with its fixed positions
    masked again, the anchor kept), so one pass over the components serves every later prompt of the same run. The
    pass costs one forward per component (8,192 rows for the exemplar prior); what is kept is [K, P, V] in float16
    for the first P positions any prompt fixed, unless that exceeds `cache_bytes`, when each call recomputes."""

    def __init__(self, model: torch.nn.Module, prior, mask_id: int, sigma: float, chunk: int = 512,
                 cache_bytes: float = 2e9):
        self.model, self.prior, self.mask_id, self.sigma, self.chunk = model, prior, mask_id, sigma, chunk
        self.cache_bytes, self.kept = cache_bytes, {}

    @torch.inference_mode()
    def _logp(self, state: torch.Tensor, upto: int, keep: bool) -> torch.Tensor:
        """[K, upto, V] log p(token at position i | state, xi = mean_k) for the first `upto` positions."""
        key = tuple(state.tolist())
        got = self.kept.get(key)
        if got is not None and got.shape[1] >= upto:
            return got
        device = next(self.model.parameters()).device
        means, L = self.prior.means, state.shape[0]
        parts = []
        for k0 in range(0, means.shape[0], self.chunk):
            mu = means[k0:k0 + self.chunk].to(device=device, dtype=torch.float32)
            sigma = torch.full((mu.shape[0],), self.sigma, device=device)
            logits = self.model(state.to(device).expand(mu.shape[0], L), sigma, mu)[:, :upto]
            parts.append(torch.log_softmax(logits.float(), -1).to(torch.float16 if keep else torch.float32).cpu())
        logp = torch.cat(parts)
        if keep:
            self.kept[key] = logp
        return logp

    def scores(self, clamp: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """[B, K]: sum over each row's fixed positions of log p(its clamped token | the rest masked, xi = mean_k)."""
        clamp, fixed = clamp.cpu(), fixed.cpu()
        base = clamp.masked_fill(fixed | (clamp < 0), self.mask_id)
        out = torch.zeros(clamp.shape[0], self.prior.means.shape[0], dtype=torch.float64)
        states, which = torch.unique(base, dim=0, return_inverse=True)
        for s, state in enumerate(states):
            rows = (which == s).nonzero().squeeze(1)
            upto = int(fixed[rows].any(0).nonzero().max()) + 1 if fixed[rows].any() else 0
            if upto == 0:
                continue
            K, V = self.prior.means.shape[0], self.model.config.vocab_size
            logp = self._logp(state, upto, keep=K * upto * V * 2 <= self.cache_bytes)
            tokens, mask = clamp[rows, :upto].clamp_min(0), fixed[rows, :upto]
            for i, r in enumerate(rows.tolist()):  # [K, positions] at the row's tokens, summed over its fixed ones
                pos = mask[i].nonzero().squeeze(1)
                out[r] = logp[:, pos, tokens[i, pos]].double().sum(1)
        return out


def exemplar_codes(scorer: ExemplarScorer, clamp: torch.Tensor, fixed: torch.Tensor, sharpness: float = 1.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, D] codes: a component of the scorer's prior drawn with probability proportional to
    w_k exp(sharpness * score_k) given each row's fixed tokens, then xi from its Gaussian (float64 draws on the
    generator's device, as `NoisePrior.sample`). sharpness 1 is the posterior under the factorized likelihood."""
    prior = scorer.prior
    post = torch.softmax(prior.log_weights.double()[None] + sharpness * scorer.scores(clamp, fixed), -1)
    dev = generator.device if generator is not None else torch.device("cpu")
    k = torch.multinomial(post.to(dev), 1, generator=generator).squeeze(1)
    eps = torch.randn(len(k), prior.dim, generator=generator, device=dev, dtype=torch.float64)
    return (prior.means.double().to(dev)[k] + prior.variances.double().to(dev)[k].sqrt() * eps).float()


@torch.inference_mode()
def encoder_codes_for(encoder: torch.nn.Module, clamp: torch.Tensor, mask_id: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, D] codes xi ~ q(xi | the clamped row with its free positions masked)."""
    x = torch.where(clamp >= 0, clamp, torch.full_like(clamp, mask_id))
    mu, logvar = encoder(x.to(next(encoder.parameters()).device))
    dev = generator.device if generator is not None else torch.device("cpu")
    eps = torch.randn(mu.shape, generator=generator, device=dev, dtype=torch.float64)
    return (mu.double().to(dev) + (0.5 * logvar.double().to(dev)).exp() * eps).float()


def check_prompt_code(name: str) -> str:
    if name not in PROMPT_CODES:
        raise DidiError(f"unknown prompt code {name!r} (choose from: {', '.join(PROMPT_CODES)})")
    return name


def sigma_at_one(eps: float = 1e-3) -> float:
    """The network's time input at t = 1 (every free position masked), for the log-linear schedule."""
    return -math.log1p(-(1 - eps))
