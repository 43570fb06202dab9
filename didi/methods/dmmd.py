"""D-MMD, discrete moment matching distillation (Hoogeboom et al., arXiv 2603.20155).

Three networks: the frozen teacher θ, the few-step student η, and an auxiliary denoiser φ, an ordinary MDLM denoiser
trained on the student's own states so that it predicts what the student's distribution looks like after a step.
One iteration on this rank's B real rows x, for a student trained to sample in k steps on the sampler's grid
t_0 = 1 > t_1 > ... > t_k = t_end:

1. per row a step j ~ U{0 .. k-1}, t = t_j, s = t_{j+1}; the state z_t is the data masked with alpha_t
   (`states="data"`, as moment matching does) or the student's own state after j steps from all masks
   (`states="student"`, no gradient);
2. the student predicts x̂_η(z_t) and takes its ancestral step t -> s (float64 draws, no gradient): z_s;
3. the auxiliary learns the student's law: loss = CE(x̂_η(z_t) | x̂_φ(z_s)), soft targets, at the positions still
   masked in z_s (`aux_updates` such updates per student update, each on fresh states);
4. the generator loss, with θ and φ frozen at z_s (φ as it was before this iteration's update of it, so it judges
   states it has not trained on):
       L_gen = -w Σ_c x̂_η,c(z_t) (log x̂_θ,c(z_s) - log x̂_φ,c(z_s))
   over the positions still masked in z_s: the student moves mass toward tokens that the teacher rates above the
   auxiliary. Positions the step revealed carry no signal (θ and φ both copy the revealed token).

Choices the sources leave open (options in `DMMDConfig`, the most natural reading the default):
- w: the pooled mean over the scored positions of the batch (`weight="mean"`), or the MDLM bound's per-position
  weight -alpha'(s)/(1 - alpha(s)), clamped to [w_min, w_max], averaged over all positions (`weight="elbo"`);
- z_t from forward-noised data (default) or from the student's own earlier steps;
- z_s with the student's drawn tokens (default) or, at the revealed positions, its probability vectors
  (`z_s="probs"`, a soft input to θ and φ);
- the auxiliary's learning rate and updates per student update; it starts as a copy of the teacher.
A student with a code input (a latent student, `--student-init`) draws its code per row from the run's prior; the
auxiliary starts from the teacher and does not read the code (`aux_init="teacher"`), so it models the student's law
marginalized over codes, the quantity the teacher's prediction is compared with; `aux_init="student"` starts it as
a copy of the student, code input included.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check_fields
from ..diffusion import Kept, LogLinearSchedule, mask_tokens, masked_log_probs
from ..sampling import sample_categorical, time_grid
from .didi_instruct import row_step_probs
from .mdlm import MDLM


@dataclass
class DMMDConfig:
    """D-MMD's own settings (`distill.dmmd.*`); the student's optimizer, schedule and EMA are DistillConfig's
    student_* fields, its start student_init. Defaults: the most natural reading of the sources."""

    steps: int = 4  # the student is trained for this many sampler steps (its grid: time_grid(steps, t_end, grid power))
    states: str = "data"  # z_t: "data" (masked real rows, as moment matching does) or "student" (its own k-step states)
    z_s: str = "sample"  # the step's revealed positions hold the drawn token ("sample") or its probabilities ("probs")
    weight: str = "mean"  # "mean" over the scored positions of the batch, or "elbo" (-alpha'/(1-alpha) at s, clamped)
    w_min: float = 0.1  # weight="elbo": the clamp of the per-position weight
    w_max: float = 10.0
    aux_lr: float = 1e-4
    aux_updates: int = 1  # auxiliary updates per student update, each on fresh states
    aux_init: str = "teacher"  # the auxiliary starts as the teacher (reads no code) or as the student ("student")

    def validate(self, d) -> None:
        """Check this section (D-MMD reads no other method's settings)."""
        check_fields(self, "distill.dmmd.",
                     ranges=[("steps", self.steps >= 1, ">= 1"), ("aux_lr", self.aux_lr > 0, "> 0"),
                             ("aux_updates", self.aux_updates >= 1, ">= 1"),
                             ("w_min", 0 < self.w_min <= self.w_max, "> 0 and <= w_max")],
                     choices=[("states", ("data", "student")), ("z_s", ("sample", "probs")),
                              ("weight", ("mean", "elbo")), ("aux_init", ("teacher", "student"))])


def generator_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, aux_logp: torch.Tensor,
                   weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Per position [N]: -w Σ_c p_η,c (log p_θ,c - log p_φ,c), from [N, V] log-probabilities; gradient only through
    the student's (θ and φ are detached)."""
    gap = (teacher_logp - aux_logp).detach()
    return -(weight * (student_logp.exp() * gap).sum(-1))


def aux_loss(target_logp: torch.Tensor, aux_logp: torch.Tensor) -> torch.Tensor:
    """Per position [N]: the cross-entropy CE(p_target | p_φ) = -Σ_c p_target,c log p_φ,c (soft targets, detached)."""
    return -(target_logp.detach().exp() * aux_logp).sum(-1)


class DMMD:
    name = "dmmd"
    eval_part = "student"
    progress_keys = ("loss", "aux_loss", "gap", "tokens_per_s")

    @classmethod
    def build(cls, s):
        """The method, the parts it trains (the student and the auxiliary) and its banner, from a StudentSetup."""
        d, m = s.dcfg, s.dcfg.dmmd
        aux = copy.deepcopy(s.student if m.aux_init == "student" else s.teacher_model).train().requires_grad_(True)
        frozen = s.frozen_teacher()
        torch.manual_seed(s.cfg.train.seed + s.rank)
        method = cls(s.cfg, d, s.tok.mask_id, frozen, s.keep, prior=s.prior)
        start = f", student from {d.student_init}" if d.student_init else ""
        code = f", a {d.student_noise_dim}-dimensional code ({d.noise_prior} prior)" if d.student_noise_dim else ""
        banner = (f"didi: D-MMD from {s.teacher}{start} ({s.n_student:.2f} M parameters{code}), a {m.steps}-step "
                  f"student, z_t from {m.states}, auxiliary lr {m.aux_lr} x{m.aux_updates}, {s.where()}")
        return method, {"student": s.student_spec,
                        "auxiliary": s.part(aux, m.aux_lr, steps_per_iteration=m.aux_updates)}, banner

    def __init__(self, cfg, dcfg, mask_id: int, teacher: torch.nn.Module, kept: Kept | None = None, prior=None):
        """teacher: frozen θ. kept: never masked (the first position of text rows, protein BOS/EOS/PAD). prior: the
        `NoisePrior` a student with a code input draws its code from (None: N(0, I))."""
        self.cfg, self.dcfg, self.mask_id = cfg, dcfg, mask_id
        self.m = dcfg.dmmd
        self.kept = kept or Kept()
        self.teacher = teacher.eval().requires_grad_(False)
        self.prior = prior
        self.schedule = LogLinearSchedule(cfg.diffusion.eps)
        self.grid = time_grid(self.m.steps, dcfg.t_end, cfg.diffusion.grid_power).float()
        self.mdlm = MDLM(cfg, mask_id, kept)  # validation: the student's NELBO, kept positions unscored

    # -- randomness: global draws sliced to this rank ------------------------------------------------
    def draw(self, generator: torch.Generator, global_batch: int, length: int, rank: int, world: int, device):
        k = self.m.steps
        j = torch.randint(0, k, (global_batch,), generator=generator)
        noise = torch.rand(global_batch, length, generator=generator)
        code = None
        if self.dcfg.student_noise_dim:
            code = (self.prior.sample(global_batch, generator) if self.prior is not None
                    else torch.randn(global_batch, self.dcfg.student_noise_dim, generator=generator))
        seeds = torch.randint(0, 2**62, (world,), generator=generator)
        per = global_batch // world
        sl = slice(rank * per, (rank + 1) * per)
        gdev = torch.device(device)
        gen = torch.Generator(gdev if gdev.type == "cuda" else "cpu").manual_seed(int(seeds[rank]))
        return {"j": j[sl].to(device), "noise": noise[sl].to(device), "gen": gen,
                "code": None if code is None else code[sl].to(device)}

    def _call(self, net, z, t, code):
        sigma = self.schedule.sigma(t)
        return net(z, sigma, code) if code is not None else net(z, sigma)

    # -- states ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _student_states(self, student, x, j, code, gen):
        """Each row's state after j of the student's k steps from all masks (kept tokens stay), no gradient."""
        mask = self.mask_id
        z = torch.where(self.kept(x), x, torch.full_like(x, mask)) if self.kept else torch.full_like(x, mask)
        out = z.clone()
        for i in range(int(j.max())):
            t = self.grid[i].expand(x.shape[0]).to(x.device)
            z = self._step(self._call(student, z, t, code).float(), z, t, self.grid[i + 1].expand_as(t).to(x.device),
                           gen)[0]
            done = j == i + 1
            out[done] = z[done]
        return out

    def _step(self, logits, z, t, s, gen):
        """The student's ancestral step t -> s per row (float64 draws): (z_s, revealed [B, L], log p at z_t's masked
        positions [M, V+1])."""
        mask = self.mask_id
        masked = z == mask
        logp = masked_log_probs(logits[masked], mask)
        rows = torch.arange(z.shape[0], device=z.device)[:, None].expand_as(z)[masked]
        q = row_step_probs(logp.detach(), self.schedule.alpha(t)[rows], self.schedule.alpha(s)[rows], mask)
        new = sample_categorical(q, gen).to(z.device)
        z_s = z.clone()
        z_s[masked] = new
        revealed = torch.zeros_like(masked)
        revealed[masked] = new != mask
        return z_s, revealed, logp

    def transition(self, student, x, draws, with_grad: bool, rollout=None):
        """z_t, the student's prediction there and its step to z_s. Returns a dict with z_t, z_s (ids, or a soft
        [B, L, V+1] input with z_s="probs"), t, s, the student's log-probs at the positions still masked in z_s
        ([P, V+1], with gradient if with_grad) and `scored` [B, L] (those positions). rollout: the network that
        walks to z_t without gradient when states="student" (the bare module where `student` is its DDP wrapper;
        default: `student`)."""
        mask, dev = self.mask_id, x.device
        j, code, gen = draws["j"], draws["code"], draws["gen"]
        t, s = self.grid[j].to(dev), self.grid[j + 1].to(dev)
        if self.m.states == "student":
            z_t = self._student_states(rollout if rollout is not None else student, x, j, code, gen)
        else:
            noise = draws["noise"].masked_fill(self.kept(x), 0.0) if self.kept else draws["noise"]
            z_t = mask_tokens(x, self.schedule.alpha(t), mask, noise)
        with torch.set_grad_enabled(with_grad):
            logits = self._call(student, z_t, t, code)
        z_s, revealed, logp = self._step(logits, z_t, t, s, gen)
        masked_t = z_t == mask
        scored = masked_t & ~revealed
        still = scored[masked_t]  # which of z_t's masked positions stay masked, in logp's row order
        z_in = z_s
        if self.m.z_s == "probs":  # revealed positions hold the student's probability vector, not the drawn token
            z_in = F.one_hot(z_s, logits.shape[-1]).float()
            z_in[revealed] = logp[revealed[masked_t]].detach().exp()
        return {"z_t": z_t, "z_s": z_in, "t": t, "s": s, "logp": logp[still], "scored": scored, "code": code}

    def _aux_update(self, ctx, tr) -> tuple[torch.Tensor, dict]:
        """One auxiliary update on a transition; returns φ's log-probs at the scored positions before the update."""
        aux = ctx.parts["auxiliary"]
        code = tr["code"] if self.m.aux_init == "student" else None
        with ctx.autocast():
            logits = self._call(aux.wrapped, tr["z_s"], tr["s"], code)
        aux_logp = masked_log_probs(logits[tr["scored"]], self.mask_id, inplace=True)
        loss = aux_loss(tr["logp"], aux_logp).sum() / tr["scored"].sum().clamp_min(1)
        grad = ctx.update("auxiliary", loss) if tr["scored"].any() else 0.0
        return aux_logp.detach(), {"aux_loss": loss.detach(), "aux_grad_norm": torch.tensor(grad)}

    # -- one iteration ---------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, generator: torch.Generator, ctx) -> dict:
        B, L = x.shape
        dev = x.device
        student = ctx.parts["student"]
        for _ in range(self.m.aux_updates - 1):  # extra auxiliary updates, each on fresh states
            draws = self.draw(generator, ctx.global_batch, L, ctx.dist.rank, ctx.dist.world, dev)
            with ctx.autocast():
                tr = self.transition(student.module, x, draws, with_grad=False)
            self._aux_update(ctx, tr)
        draws = self.draw(generator, ctx.global_batch, L, ctx.dist.rank, ctx.dist.world, dev)
        with ctx.autocast():
            tr = self.transition(student.wrapped, x, draws, with_grad=True, rollout=student.module)
        aux_logp, metrics = self._aux_update(ctx, tr)
        scored = tr["scored"]
        with torch.no_grad(), ctx.autocast():
            t_logits = self._call(self.teacher, tr["z_s"], tr["s"], None)
        teacher_logp = masked_log_probs(t_logits[scored], self.mask_id, inplace=True)
        per_pos = generator_loss(tr["logp"], teacher_logp, aux_logp)
        if self.m.weight == "elbo":  # -alpha'/(1-alpha) at s per position, then a mean over every scored-or-not one
            w = (-self.schedule.loss_weight(tr["s"])).clamp(self.m.w_min, self.m.w_max)
            rows = torch.arange(B, device=dev)[:, None].expand(B, L)[scored]
            n_pos = (~self.kept(x)).sum() if self.kept else torch.tensor(B * L, device=dev)
            loss = (w[rows] * per_pos).sum() / n_pos.clamp_min(1)
        else:
            loss = per_pos.sum() / scored.sum().clamp_min(1)
        grad = ctx.update("student", loss)
        with torch.no_grad():
            n = scored.sum().clamp_min(1)
            gap = (aux_logp.exp() * (aux_logp - teacher_logp)).sum(-1).sum() / n  # KL(φ || θ) at z_s
            entropy = -(tr["logp"].exp() * tr["logp"]).sum(-1).sum() / n
        metrics.update(loss=loss.detach(), gap=gap, student_entropy=entropy, scored_frac=scored.float().mean(),
                       grad_norm=torch.tensor(grad))
        return {k: float(ctx.all_mean(torch.as_tensor(v, device=dev).float())) for k, v in metrics.items()}

    # -- validation and exports ------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, model, batches, seed: int) -> dict:
        """The student's NELBO per token on held-out data, scored like the teacher's (kept positions left out; a
        student with a code input gets the zero code, its prior's mean)."""
        return self.mdlm.validate(model, batches, seed)

    def exports(self) -> dict:
        from .. import runs

        return {runs.WEIGHTS: ("student", lambda m: m.state_dict()),
                "auxiliary.safetensors": ("auxiliary", lambda m: m.state_dict())}
