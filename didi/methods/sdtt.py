"""SDTT, Self-Distillation Through Time (arXiv 2410.21035): the baseline DiDi-Instruct is compared against.

Rounds k = 0 .. R-1 with R = log2(start_steps / end_steps). In round k the round's teacher runs
`start_steps / 2**k` ancestral steps per sequence, i.e. steps of size dt/2 with dt = 2**(k+1) / start_steps;
the student learns to do in ONE step of size dt what the teacher does in two. At the end of a round the
student's weights become the next round's teacher (round 0's teacher is the trained MDLM).

One iteration on real sequences x:

1. t = dt * j with j ~ U{1 .. 1/dt} per row (the student's grid), z_t = x masked with alpha_t;
2. teacher half-step t -> t - dt/2 (float64 draws): positions revealed here get the teacher's first
   prediction p1 as target; one more teacher forward on the half-step state gives p2, the target of the
   positions still masked (what the second half-step would draw from);
3. loss = mean over positions masked in z_t of D(student(z_t), target), D = reverse KL (student || target,
   the default, which the SDTT paper found best) or forward KL (`distill.sdtt.divergence="kl"`).

Choices where the spec is open: the next round's teacher is the student's raw weights (not its EMA);
t is drawn on the student's step grid; the schedule (warm-up, decay) spans all rounds; the round teacher
is part of the checkpoint so resume is exact.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ..config import check_fields
from ..diffusion import Kept, LogLinearSchedule, mask_tokens, masked_log_probs
from ..errors import DidiError
from ..sampling import sample_categorical
from .mdlm import MDLM


@dataclass
class SDTTConfig:
    """SDTT's own settings (`distill.sdtt.*`): rounds halve the step count from start_steps to end_steps."""

    start_steps: int = 1024
    end_steps: int = 8
    divergence: str = "reverse_kl"  # or "kl" (forward: teacher || student)

    def validate(self, d) -> None:
        check_fields(self, "distill.sdtt.", choices=[("divergence", ("reverse_kl", "kl"))])
        if d.student_init:
            raise DidiError("distill.student_init: SDTT starts from its teacher (a DiDi-Instruct and D-MMD option)")
        if d.student_noise_dim:
            raise DidiError("distill.student_noise_dim: SDTT matches per-token marginals and has no code input (a "
                            "DiDi-Instruct, D-MMD and latent option)")
        round_schedule(self.start_steps, self.end_steps, d.max_steps)


def round_schedule(start_steps: int, end_steps: int, max_steps: int) -> list[dict]:
    """The rounds as dicts: round, first_step, last_step (exclusive), teacher_steps, student_steps."""
    if start_steps < 2 or end_steps < 1 or start_steps % end_steps:
        raise DidiError(f"sdtt: start_steps {start_steps} must be a multiple of end_steps {end_steps}")
    n = round(math.log2(start_steps // end_steps))
    if 2**n * end_steps != start_steps or n < 1:
        raise DidiError(f"sdtt: start_steps / end_steps must be a power of two >= 2, not {start_steps}/{end_steps}")
    if max_steps < n:
        raise DidiError(f"sdtt: {n} rounds need max_steps >= {n}, not {max_steps}")
    per = math.ceil(max_steps / n)
    rounds = []
    for k in range(n):
        first, last = k * per, min((k + 1) * per, max_steps)
        rounds.append({"round": k, "first_step": first, "last_step": last, "teacher_steps": start_steps // 2**k,
                       "student_steps": start_steps // 2 ** (k + 1)})
    return rounds


def divergence(student_logp: torch.Tensor, target_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-position divergence [N] between two [N, V] log-distributions: reverse KL(student || target) or
    forward KL(target || student)."""
    if kind == "reverse_kl":
        return (student_logp.exp() * (student_logp - target_logp)).sum(-1)
    if kind == "kl":
        return (target_logp.exp() * (target_logp - student_logp)).sum(-1)
    raise DidiError(f"sdtt: divergence must be 'reverse_kl' or 'kl', not {kind!r}")


class SDTT:
    name = "sdtt"
    eval_part = "student"
    progress_keys = ("loss", "round", "tokens_per_s")

    @classmethod
    def build(cls, s):
        """The method, the part it trains (the student) and its banner, from a StudentSetup."""
        frozen = s.frozen_teacher()
        torch.manual_seed(s.cfg.train.seed + s.rank)
        method = cls(s.cfg, s.dcfg, s.tok.mask_id, frozen, s.keep)
        banner = (f"didi: SDTT from {s.teacher} ({s.n_student:.2f} M parameters), {len(method.rounds)} rounds "
                  f"{s.dcfg.sdtt.start_steps} -> {s.dcfg.sdtt.end_steps} steps, {s.where()}")
        return method, {"student": s.student_spec}, banner

    def __init__(self, cfg, dcfg, mask_id: int, teacher: torch.nn.Module, kept: Kept | None = None):
        self.cfg, self.dcfg, self.mask_id = cfg, dcfg, mask_id
        self.kept = kept or Kept()  # never masked (protein BOS/EOS/PAD, the first position of text rows)
        self.schedule = LogLinearSchedule(cfg.diffusion.eps)
        self.rounds = round_schedule(dcfg.sdtt.start_steps, dcfg.sdtt.end_steps, dcfg.max_steps)
        divergence(torch.zeros(1, 1), torch.zeros(1, 1), dcfg.sdtt.divergence)  # validate the name early
        self.teacher = teacher.eval().requires_grad_(False)
        self.round = 0

    def round_at(self, step: int) -> int:
        """The round that iteration `step` (0-based) belongs to; steps past the schedule stay in the last one."""
        for r in self.rounds:
            if step < r["last_step"]:
                return r["round"]
        return self.rounds[-1]["round"]

    def _advance(self, step: int, student: torch.nn.Module) -> None:
        k = self.round_at(step)
        if k != self.round:  # the student so far becomes the teacher of the new round
            self.teacher.load_state_dict(student.state_dict())
            self.round = k

    def step(self, x: torch.Tensor, generator: torch.Generator, ctx) -> dict:
        sched, mask = self.schedule, self.mask_id
        part = ctx.parts["student"]
        self._advance(part.scheduler.last_epoch, part.module)
        r = self.rounds[self.round]
        dt = 1.0 / r["student_steps"]
        device = x.device
        B, L = x.shape
        n_glob, rank = ctx.global_batch, ctx.dist.rank
        j = torch.randint(1, r["student_steps"] + 1, (n_glob,), generator=generator)
        noise = torch.rand(n_glob, L, generator=generator)
        seed = int(torch.randint(0, 2**62, (ctx.dist.world,), generator=generator)[rank])
        gen = torch.Generator(device if torch.device(device).type == "cuda" else "cpu").manual_seed(seed)
        sl = slice(rank * B, (rank + 1) * B)
        t = (j[sl].double() * dt).float().to(device)
        s = (t - dt / 2).clamp_min(0)
        noise = noise[sl].to(device)
        if self.kept:
            noise = noise.masked_fill(self.kept(x), 0.0)  # noise 0 < alpha: the token stays
        z = mask_tokens(x, sched.alpha(t), mask, noise)
        masked = z == mask

        with torch.no_grad(), ctx.autocast():
            p1 = masked_log_probs(self.teacher(z, sched.sigma(t))[masked], mask, inplace=True)  # [M, V+1]
        rows = torch.arange(B, device=device)[:, None].expand(B, L)[masked]
        a_t, a_s = sched.alpha(t)[rows].double(), sched.alpha(s)[rows].double()
        q = p1.double().exp() * ((a_s - a_t) / (1 - a_t))[:, None]
        q[:, mask] = ((1 - a_s) / (1 - a_t))
        drawn = sample_categorical(q, gen).to(device)
        z_half = z.clone()
        z_half[masked] = drawn
        revealed = drawn != mask
        with torch.no_grad(), ctx.autocast():
            p2 = masked_log_probs(self.teacher(z_half, sched.sigma(s))[masked], mask, inplace=True)
        target = torch.where(revealed[:, None], p1, p2)

        with ctx.autocast():
            logits = part.wrapped(z, sched.sigma(t))
        student_logp = masked_log_probs(logits[masked], mask, inplace=True)
        per_pos = divergence(student_logp, target, self.dcfg.sdtt.divergence)
        loss = per_pos.sum() / masked.sum().clamp_min(1)
        grad_norm = ctx.update("student", loss)
        metrics = {"loss": loss.detach(), "round": torch.tensor(float(self.round), device=device),
                   "revealed_frac": revealed.float().mean() if revealed.numel() else torch.zeros((), device=device),
                   "grad_norm": torch.tensor(grad_norm, device=device)}
        return {k: float(ctx.all_mean(torch.as_tensor(v, device=device).float())) for k, v in metrics.items()}

    @torch.no_grad()
    def validate(self, model, batches, seed: int) -> dict:
        """The student's NELBO per token on held-out data, scored exactly as the teacher's is (`MDLM.validate`: kept
        positions neither masked nor counted), so the two are comparable; it drifts up as the student distils."""
        return MDLM(self.cfg, self.mask_id, self.kept).validate(model, batches, seed)

    def exports(self) -> dict:
        from .. import runs

        return {runs.WEIGHTS: ("student", lambda m: m.state_dict())}

    def state_dict(self) -> dict:
        # the round teacher differs from the loaded MDLM once round 1 has begun; resume needs its weights
        return {"round": self.round, "teacher": copy.deepcopy(self.teacher.state_dict()) if self.round else None}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state.get("round", 0))
        if state.get("teacher") is not None:
            self.teacher.load_state_dict(state["teacher"])
