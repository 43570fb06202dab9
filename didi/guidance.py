"""Reward-guided ancestral sampling (RGAS, from the paper): a student guided by the DiDi-Instruct discriminator.

With T steps and re-ranking ratio rho, K = int(T (1 - rho)):

* steps i < K, gradient tilting: the discriminator reads a soft input (the student's probabilities at
  masked positions, one-hot elsewhere); g = d(sum of its logits over masked positions)/d(logits); the
  logits at masked positions become `logits + h_i * clip(g, -1, 1)`, with h_i linear from h0 to h1;
  then an ordinary ancestral step;
* steps i >= K, re-ranking: M candidate next states are drawn, each is scored by the discriminator's
  logit summed over all positions (at the next step's time), and one is picked by sampling from
  softmax(score).

Draws are float64 like everywhere else. The returned `nfe` counts student evaluations per sequence
(cached reuses excluded, as in `ancestral_sample`); `total_evals` adds every discriminator forward and
every discriminator backward (one evaluation each), so a tilting step costs 2 more and a re-ranking
step M more.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .diffusion import LogLinearSchedule
from .sampling import (
    Denoiser,
    RowCache,
    SampleOutput,
    fill_remaining,
    initial_state,
    sample_categorical,
    time_grid,
    unmask_step,
)


def h_schedule(k: int, h0: float, h1: float) -> list[float]:
    """Linear ramp of the tilting strength over the k tilting steps."""
    if k <= 0:
        return []
    if k == 1:
        return [h0]
    return [h0 + (h1 - h0) * i / (k - 1) for i in range(k)]


def tilt_logits(discriminator: Denoiser, z: torch.Tensor, logits: torch.Tensor, sigma: torch.Tensor, h: float,
                mask_id: int) -> torch.Tensor:
    """Logits moved along the clipped gradient of the summed discriminator logit at masked positions.

    z: [n, L] ids, logits: [n, L, V+1] student logits, sigma: [n]. Returns new logits (no graph attached).
    """
    masked = z == mask_id
    with torch.enable_grad():
        lg = logits.detach().float().requires_grad_(True)
        blocked = torch.full_like(lg[..., :1], float("-inf"))
        probs = torch.cat([lg[..., :mask_id], blocked, lg[..., mask_id + 1:]], -1).softmax(-1)
        onehot = F.one_hot(z, lg.shape[-1]).to(probs.dtype)
        soft = torch.where(masked[..., None], probs, onehot)
        score = (discriminator(soft, sigma).float() * masked).sum()
        (g,) = torch.autograd.grad(score, lg)
    return torch.where(masked[..., None], logits.float() + h * g.clamp(-1, 1), logits.float()).detach()


@torch.no_grad()
def rgas_sample(
    student: Denoiser,
    discriminator: Denoiser,
    batch_size: int,
    length: int,
    steps: int,
    mask_id: int,
    *,
    rho: float = 0.5,
    h0: float = 30.0,
    h1: float = 40.0,
    candidates: int = 4,
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
) -> SampleOutput:
    """Guided ancestral sampling on the grid `time_grid(steps, t_min, grid_power)`. Arguments as `ancestral_sample`.

    rho: share of the steps (at the end) that re-rank `candidates` draws; the first int(steps (1 - rho))
    steps tilt with strength h0 -> h1. cache: reuse a row's last student output while its tokens are
    unchanged (valid for a student that ignores time); the discriminator is always re-evaluated.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], not {rho}")
    if candidates < 1:
        raise ValueError("candidates must be >= 1")
    if final_step not in ("argmax", "sample", "none"):
        raise ValueError(f"final_step must be argmax, sample or none, not {final_step!r}")
    schedule = schedule or LogLinearSchedule()
    start = time.perf_counter()
    z = initial_state(batch_size, length, mask_id, clamp, device)
    rc = RowCache(student, batch_size, mask_id, schedule, cache, device)
    disc_evals = torch.zeros(batch_size, dtype=torch.long)
    grid = time_grid(steps, t_min, grid_power)
    k_tilt = int(steps * (1 - rho))
    hs = h_schedule(k_tilt, h0, h1)

    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"guided sampling {steps} steps", leave=False)
    for i in iterator:
        t, s = float(grid[i]), float(grid[i + 1])
        logits = rc.logits(z, t)
        rows = (z == mask_id).any(1)
        if not rows.any():
            continue
        zr, lr = z[rows], logits[rows]
        n = int(rows.sum())
        if i < k_tilt:
            lr = tilt_logits(discriminator, zr, lr, rc.sigma(n, t), hs[i], mask_id)
            disc_evals[rows.cpu()] += 2  # one forward, one backward
            m = zr == mask_id
            new = zr.clone()
            new[m] = unmask_step(lr[m], schedule.alpha(t), schedule.alpha(s), mask_id, temperature, top_p,
                                 generator).to(device)
        else:
            m = zr == mask_id
            lp = lr[m]
            cands = zr.unsqueeze(0).repeat(candidates, 1, 1)  # [M, n, L]
            for c in range(candidates):
                cands[c][m] = unmask_step(lp, schedule.alpha(t), schedule.alpha(s), mask_id, temperature, top_p,
                                          generator).to(device)
            flat = cands.reshape(candidates * n, length)
            score = discriminator(flat, rc.sigma(candidates * n, s)).float().sum(-1).reshape(candidates, n)
            disc_evals[rows.cpu()] += candidates
            pick = sample_categorical(torch.softmax(score.double().T, -1), generator).to(device)  # [n]
            new = cands[pick, torch.arange(n, device=device)]
        changed = (new != zr).any(1)
        z[rows] = new
        moved = torch.zeros_like(rows)
        moved[rows] = changed
        rc.changed(moved)

    if final_step != "none" and (z == mask_id).any():
        fill_remaining(z, rc.logits(z, float(grid[-1]))[z == mask_id], mask_id, final_step, temperature, top_p,
                       generator)
    return SampleOutput(tokens=z, nfe=rc.nfe, seconds=time.perf_counter() - start, total_evals=rc.nfe + disc_evals)
