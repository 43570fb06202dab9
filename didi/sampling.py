"""Samplers. Every categorical draw is made in float64 (probabilities and noise): by inverse CDF with one
uniform per row, or by the exponential race (`draw="race"`); both have the same law.

`ancestral_sample` takes a denoiser (the teacher, a student, a guided student) and returns token
ids, the exact number of network evaluations per sequence, and wall-clock seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .diffusion import LogLinearSchedule, masked_log_probs


def nucleus_probs(logp: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """float64 probabilities from log-probabilities [..., K], with temperature and nucleus (top-p) truncation."""
    logp = logp.double()
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if temperature != 1.0:
        logp = torch.log_softmax(logp / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p * keep)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one index per row of unnormalized probabilities [..., K] by an exponential race, in float64.

    argmax(p / E) with E ~ Exp(1) is an exact categorical draw; in float32 the noise tail is cut off
    and the draw acts like a lower temperature (Zheng et al. 2024), so both are float64 here.
    """
    probs = probs.double()
    device = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape, generator=generator, dtype=torch.float64, device=device).to(probs.device)
    noise = -torch.log1p(-u)  # Exp(1); 1-u avoids log(0)
    return (probs / noise).argmax(dim=-1)


def inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None, summed: bool = False) -> torch.Tensor:
    """Draw one index per row of unnormalized float64 probabilities [N, K] (overwritten: their running sums; with
    summed=True they are the running sums already) with one float64 uniform per row: the first index whose running
    sum exceeds u * total.

    The law of `sample_categorical` with one uniform per row instead of K exponentials: rounding moves each
    token's probability by at most about K * 1e-16 of the total, and a token of probability 0 is never drawn.
    """
    c = probs if summed else probs.cumsum_(-1)
    return search_running_sums(c, uniforms(c.shape[0], generator, c.device))


def uniforms(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """[n, 1] float64 uniforms from `generator` (on its device), moved to `device`."""
    gdev = generator.device if generator is not None else device
    return torch.rand(n, 1, generator=generator, dtype=torch.float64, device=gdev).to(device)


def search_running_sums(c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The first index of each row of running sums c [N, K] whose sum exceeds u * total (u: [N, 1] uniforms)."""
    total = c[:, -1:].contiguous()
    idx = torch.searchsorted(c, u * total, right=True)  # c[idx] > u * total >= c[idx - 1]: p[idx] > 0
    last = torch.searchsorted(c, total)  # u * total rounded up to the total: the last token with p > 0
    return torch.minimum(idx, last).squeeze(-1)


DRAWS = ("inverse_cdf", "race")
DRAW_BLOCK_BYTES = 1 << 20  # draw_tokens' float64 rows per block on a CPU


class Workspace:
    """A float64 scratch buffer reused across a sampler's steps. A fresh [N, K] float64 tensor of tens of MB is
    mapped anew and page-faulted on first touch (glibc maps blocks above 32 MB itself): in a profiling run of the
    8-step sampler at the `tiny` English shape (about 512 x 8,193 per step; not in bench/), a draw that grew the
    buffer took 11-15 ms against 6 ms for one that reused it. The revealed count varies from step to step, so
    the buffer grows with headroom (a quarter, or doubling): one allocation per sampler call in practice. The
    inverse-CDF draws without nucleus need only one block of it (`draw_tokens`)."""

    def __init__(self):
        self.buf: torch.Tensor | None = None

    def take(self, like: torch.Tensor) -> torch.Tensor:
        n = like.numel()
        if self.buf is None or self.buf.numel() < n or self.buf.device != like.device:
            grown = 0 if self.buf is None or self.buf.device != like.device else 2 * self.buf.numel()
            self.buf = torch.empty(max(n + n // 4, grown), dtype=torch.float64, device=like.device)
        return self.buf[:n].view(like.shape)


def draw_tokens(logits: torch.Tensor, mask_id: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None, method: str = "inverse_cdf",
                workspace: Workspace | None = None) -> torch.Tensor:
    """One float64 draw per row of raw logits [N, K] from softmax(logits / temperature), nucleus-truncated,
    with the mask column removed (SUBS: the mask is never an output). Returns [N] ids.

    The sampler's hot path: a float64 copy of the logits, exponentiated and summed in place, then `inverse_cdf`
    (one uniform per row) or, with method="race", the exponential race (`sample_categorical`: K float64
    exponentials per row, about 2x the time). Both have the law of
    `sample_categorical(nucleus_probs(masked_log_probs(...)))`. workspace: where the float64 copy goes. On a CPU
    the rows go through in blocks of about 1 MB (`DRAW_BLOCK_BYTES`). With inverse CDF and no nucleus, each block
    is copied, exponentiated, summed and searched while it is in cache, so the float64 copy is one block, never the
    whole [N, K] matrix (in a profiling run of the 8-step sampler at the `tiny` English shape, not in bench/: the
    draws took 38 ms instead of 55).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if method not in DRAWS:
        raise ValueError(f"draw method must be one of {', '.join(DRAWS)}, not {method!r}")
    n, k = logits.shape
    mask_id = None if mask_id is None else mask_id % k  # a negative id names the same column
    block = max(1, DRAW_BLOCK_BYTES // (8 * k)) if logits.device.type == "cpu" else max(1, n)
    # inverse CDF without nucleus: each block is searched while in cache, so the float64 copy is one block, reused
    # (the uniforms are drawn first, one per row, the same stream as `inverse_cdf`)
    by_block = method == "inverse_cdf" and top_p == 1.0
    like = logits[:block] if by_block else logits
    s = torch.empty(like.shape, dtype=torch.float64, device=logits.device) if workspace is None \
        else workspace.take(like)
    if by_block:
        u, out = uniforms(n, generator, logits.device), torch.empty(n, dtype=torch.long, device=logits.device)
    # float64 exp is exact to an ulp whatever the shift, so rows whose largest kept logit / temperature lies in
    # (-700, 700) need none; one check over the input (in its own dtype, half the bytes of float64) decides
    keep = [(0, k)] if mask_id is None else [r for r in ((0, mask_id), (mask_id + 1, k)) if r[1] > r[0]]
    in_range = False
    if n and keep:
        top = torch.stack([logits[:, a:b].amax(-1) for a, b in keep]).amax(0)
        in_range = bool(((top > -700 * temperature) & (top < 700 * temperature)).all())
    for i in range(0, max(1, n), block):
        src = logits[i:i + block]
        b = (s[:src.shape[0]] if by_block else s[i:i + block]).copy_(src)
        if temperature != 1.0:
            b.div_(temperature)
        if mask_id is not None:
            b[..., mask_id] = -math.inf
        if not in_range:  # exp would overflow, or underflow a whole row: shift by each row's largest kept logit
            b.sub_(b.amax(-1, keepdim=True))
        b.exp_()
        if by_block and src.shape[0]:
            out[i:i + block] = search_running_sums(b.cumsum_(-1), u[i:i + block])
    if by_block:
        return out
    if top_p < 1.0:
        s = nucleus_probs(s.div_(s.sum(-1, keepdim=True)).log_(), 1.0, top_p)
        return inverse_cdf(s, generator) if method == "inverse_cdf" else sample_categorical(s, generator)
    return sample_categorical(s, generator)  # method "race"


def step_probs(logp: torch.Tensor, alpha_t: float, alpha_s: float, mask_id: int, temperature: float = 1.0,
               top_p: float = 1.0) -> torch.Tensor:
    """Unnormalized float64 q(x_s | z_t) at masked positions. logp: [N, V+1] with the mask excluded.

    q(x_s = v) ∝ p(x0 = v | z_t) (alpha_s - alpha_t) for real tokens v, q(x_s = m) ∝ 1 - alpha_s.
    """
    q = nucleus_probs(logp, temperature, top_p) * (alpha_s - alpha_t)
    q[..., mask_id] = 1 - alpha_s
    return q


def reveal_probability(alpha_t: float, alpha_s: float) -> float:
    """The real tokens' share of q(x_s | z_t) at a masked position: (alpha_s - alpha_t) / (1 - alpha_t)."""
    return (alpha_s - alpha_t) / (1 - alpha_t)


def unmask_step(logits: torch.Tensor, alpha_t: float, alpha_s: float, mask_id: int, temperature: float = 1.0,
                top_p: float = 1.0, generator: torch.Generator | None = None,
                draw: str = "inverse_cdf") -> torch.Tensor:
    """One draw from q(x_s | z_t) at masked positions, the same law as `sample_categorical(step_probs(...))`.

    Drawn in two float64 stages: a position is revealed with `reveal_probability` and only revealed
    positions draw their token from p(x0 | z_t) (SUBS: the mask logit removed). With many steps few
    positions are revealed per step, so most log-softmaxes and full-vocabulary draws are skipped.
    logits: [N, V+1] raw denoiser outputs at masked positions; returns [N] ids (mask_id: stays masked).
    """
    n = logits.shape[0]
    device = generator.device if generator is not None else logits.device
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device).to(logits.device)
    reveal = u < reveal_probability(alpha_t, alpha_s)
    out = torch.full((n,), mask_id, dtype=torch.long, device=logits.device)
    if reveal.any():
        out[reveal] = draw_tokens(logits[reveal], mask_id, temperature, top_p, generator, draw).to(logits.device)
    return out


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # [B, L] token ids
    nfe: torch.Tensor  # [B] denoiser evaluations per sequence (cached reuses not counted)
    seconds: float
    total_evals: torch.Tensor | None = None  # [B] every network call incl. discriminator (guided sampling)
    text: list[str] | None = None

    @property
    def nfe_mean(self) -> float:
        return float(self.nfe.double().mean())

    @property
    def nfe_max(self) -> int:
        return int(self.nfe.max())


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z [n, L], sigma [n]) -> logits [n, L, V+1]


def initial_state(batch_size: int, length: int, mask_id: int, clamp: torch.Tensor | None, device) -> torch.Tensor:
    """All-masked sequences [B, L], with the clamped ids (>= 0 in `clamp`) already in place."""
    z = torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)
    if clamp is None:
        return z
    clamp = clamp.to(device)
    if clamp.shape != z.shape:
        raise ValueError(f"clamp has shape {tuple(clamp.shape)}, expected {tuple(z.shape)}")
    return torch.where(clamp >= 0, clamp, z)


class SplitDenoiser:
    """A DiT denoiser split at its output layer, so that a sampler computes logits only where it draws a token.

    `features(z, sigma)` runs the body on every position: (h [n, L, H], c [n, cond]). `head(h, c)` runs the
    output layer (norm, modulation, the [H, V+1] projection) on chosen positions h [N, H] with their rows'
    c [N, cond]: logits [N, V+1]. At the `tiny` English shape (H 256, V 8,193) the projection is about a third of
    the network's work, and an ancestral step draws only the positions it reveals. Calling it gives the full
    logits, like any denoiser. blocked: token ids whose logits are set to -1e6 (never drawn).
    noise: [B, noise_dim] for a model with a per-sequence noise input (`DIT.add_noise_input`): row i of the batch
    always sees noise[i] (`per_row`: the samplers pass the indices of the rows they evaluate).
    """

    def __init__(self, model: torch.nn.Module, blocked: list[int] | tuple[int, ...] = (),
                 noise: torch.Tensor | None = None):
        self.model, self.blocked, self.noise = model, list(blocked), noise

    @property
    def per_row(self) -> bool:
        return self.noise is not None

    def features(self, z: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.noise is None:
            return self.model.hidden_states(z, sigma)
        noise = self.noise if rows is None else self.noise[rows]
        if noise.shape[0] != z.shape[0]:
            raise ValueError(f"noise for {noise.shape[0]} rows, the batch has {z.shape[0]}")
        return self.model.hidden_states(z, sigma, noise.to(z.device))

    def head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = self.model.output_layer(h, c)
        if self.blocked:
            out[..., self.blocked] = -1e6
        return out

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(*self.features(z, sigma, rows))


def is_split(denoiser) -> bool:
    return callable(getattr(denoiser, "features", None)) and callable(getattr(denoiser, "head", None))


class RowCache:
    """Denoiser outputs per row with exact NFE counting, shared by the samplers.

    `update(z, t)` evaluates only the rows that still hold a mask and, with `cache=True` (a denoiser that
    ignores time), only those changed since their last evaluation (`changed(rows)` marks them); `nfe`
    counts the evaluations of each row. `at(where)` gives the logits [N, V+1] at the positions of a [B, L]
    boolean. With split=True (a `SplitDenoiser`) the cache holds the body's features and `at` runs the output
    layer on those positions only; otherwise it holds the full logits (`logits(z, t)` updates and returns them).
    """

    def __init__(self, denoiser: Denoiser, batch_size: int, mask_id: int, schedule: LogLinearSchedule,
                 cache: bool, device, split: bool = False):
        self.denoiser, self.mask_id, self.schedule, self.cache, self.device = denoiser, mask_id, schedule, cache, device
        self.split = split
        self.nfe = torch.zeros(batch_size, dtype=torch.long)
        self.stale = torch.ones(batch_size, dtype=torch.bool, device=device)
        self.out: tuple[torch.Tensor, ...] | None = None  # (logits,) or, split, (h, c)

    def sigma(self, n: int, t: float) -> torch.Tensor:
        return self.schedule.sigma(torch.full((n,), t, dtype=torch.float64, device=self.device)).float()

    def update(self, z: torch.Tensor, t: float) -> None:
        need = (z == self.mask_id).any(1)
        if self.cache:
            need &= self.stale
        if not need.any():
            return
        every = bool(need.all())
        zz, sigma = (z if every else z[need]), self.sigma(int(need.sum()), t)
        kw = {}
        if getattr(self.denoiser, "per_row", False):  # a denoiser with per-row inputs (noise) is told the rows
            kw["rows"] = None if every else need.nonzero(as_tuple=True)[0]
        if self.split:
            out = tuple(self.denoiser.features(zz, sigma, **kw))
        else:
            out = (self.denoiser(zz, sigma, **kw).float(),)
        if every:  # every row evaluated: keep the output itself, no copy
            self.out = out
        else:
            if self.out is None:
                self.out = tuple(torch.zeros(z.shape[0], *o.shape[1:], dtype=o.dtype, device=self.device)
                                 for o in out)
            for buf, o in zip(self.out, out):
                buf[need] = o
        self.nfe[need.cpu()] += 1
        self.stale[need] = False

    def at(self, where: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return self.out[0][where]
        h, c = self.out
        return self.denoiser.head(h[where], c[where.nonzero(as_tuple=True)[0]]).float()

    def logits(self, z: torch.Tensor, t: float) -> torch.Tensor | None:
        """Full logits [B, L, V+1] (not split)."""
        self.update(z, t)
        return None if self.out is None else self.out[0]

    def changed(self, rows: torch.Tensor) -> None:
        self.stale |= rows


def fill_remaining(z: torch.Tensor, logits: torch.Tensor, mask_id: int, final_step: str, temperature: float,
                   top_p: float, generator: torch.Generator | None, draw: str = "inverse_cdf",
                   workspace: Workspace | None = None) -> None:
    """The noise-removal step: masks still left are filled by argmax or a float64 draw (in place).
    logits: [N, V+1] at the masked positions of z, in row-major order."""
    masked = z == mask_id
    if final_step == "argmax":
        z[masked] = masked_log_probs(logits, mask_id).argmax(-1)
    else:
        z[masked] = draw_tokens(logits, mask_id, temperature, top_p, generator, draw, workspace).to(z.device)


def time_grid(steps: int, t_min: float, power: float = 1.0) -> torch.Tensor:
    """The k-step sampler's times [steps + 1], float64, from 1 down to t_min: t_i = 1 - (1 - t_min) (i / steps)^power.
    power 1 is linspace(1, t_min, steps + 1) (every step reveals the same expected share of tokens); power > 1
    reveals few tokens in the first steps, when the model knows least, and more in the last ones."""
    if power <= 0:
        raise ValueError(f"grid power must be > 0, not {power}")
    if power == 1.0:
        return torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64) ** power
    return 1.0 - (1.0 - t_min) * frac


def ancestral_sample(
    denoiser: Denoiser,
    batch_size: int,
    length: int,
    steps: int,
    mask_id: int,
    *,
    schedule: LogLinearSchedule | None = None,
    clamp: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    final_step: str = "argmax",
    cache: bool = True,
    t_min: float = 1e-5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    grid_power: float = 1.0,
    draw: str = "inverse_cdf",
) -> SampleOutput:
    """Ancestral sampling with `steps` steps on the grid `time_grid(steps, t_min, grid_power)` (linspace(1, t_min,
    steps + 1) by default).

    clamp: optional [B, L] ids, -1 where free; clamped tokens start unmasked and, being carried over,
    never change (prefix, suffix or any positions: infilling).
    cache: reuse a row's last denoiser output when none of its tokens changed since; valid only for a
    denoiser that ignores time (the official teacher is not time-conditioned). Rows with nothing left
    to unmask are not evaluated at all. Both savings are reflected in the returned NFE.
    final_step: "argmax" | "sample" | "none": how masks still left after the last step are filled.
    draw: how each float64 categorical is drawn, "inverse_cdf" or "race" (`draw_tokens`; the same law).
    A denoiser with `features` and `head` (a `SplitDenoiser`, what `didi sample` uses) has its output layer run only
    at the positions drawn in each step, once per position in all; any other callable gives full logits each step.
    Runs under `torch.inference_mode` (against no_grad: -4 to +8 % in three runs of bench/speed.py, within its noise);
    the returned tensors are ordinary ones, usable in autograd.
    """
    with torch.inference_mode():
        out = _ancestral(denoiser, batch_size, length, steps, mask_id, schedule, clamp, temperature, top_p, final_step,
                         cache, t_min, generator, device, progress, grid_power, draw)
    return SampleOutput(tokens=out.tokens.clone(), nfe=out.nfe.clone(), seconds=out.seconds,
                        total_evals=out.total_evals.clone())


def _ancestral(denoiser, batch_size, length, steps, mask_id, schedule, clamp, temperature, top_p, final_step, cache,
               t_min, generator, device, progress, grid_power, draw) -> SampleOutput:
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if final_step not in ("argmax", "sample", "none"):
        raise ValueError(f"final_step must be argmax, sample or none, not {final_step!r}")
    schedule = schedule or LogLinearSchedule()
    start = time.perf_counter()
    z = initial_state(batch_size, length, mask_id, clamp, device)
    rc = RowCache(denoiser, batch_size, mask_id, schedule, cache, device, split=is_split(denoiser))
    grid = time_grid(steps, t_min, grid_power)
    ws = Workspace()

    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"sampling {steps} steps", leave=False)
    for i in iterator:
        t, s = float(grid[i]), float(grid[i + 1])
        masked = z == mask_id
        if not masked.any():
            continue
        rc.update(z, t)
        # two float64 stages (the law of `unmask_step`), indexing the logits only where a token is revealed
        gdev = generator.device if generator is not None else device
        u = torch.rand(int(masked.sum()), generator=generator, dtype=torch.float64, device=gdev).to(device)
        reveal = torch.zeros_like(masked)
        reveal[masked] = u < reveal_probability(schedule.alpha(t), schedule.alpha(s))
        if reveal.any():
            z[reveal] = draw_tokens(rc.at(reveal), mask_id, temperature, top_p, generator, draw, ws).to(device)
            rc.changed(reveal.any(1))

    if final_step != "none" and (z == mask_id).any():
        rc.update(z, float(grid[-1]))
        fill_remaining(z, rc.at(z == mask_id), mask_id, final_step, temperature, top_p, generator, draw, ws)
    return SampleOutput(tokens=z, nfe=rc.nfe, seconds=time.perf_counter() - start, total_evals=rc.nfe.clone())
