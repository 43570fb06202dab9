"""DiDi-Instruct distillation (arXiv 2509.25035): a policy-gradient estimator of the integral-KL gradient whose
reward comes from a discriminator between noised real and noised student sequences.

One iteration on this rank's B real sequences x:

1. repeat each row G times (groups are formed locally, so a group never straddles DDP ranks);
2. tau ~ Beta(a, b) per row, clamped to [tau_min, tau_max];
3. a student rollout from the all-masked x_1 (score decomposition: one step 1 -> tau, then the remaining
   steps on linspace(tau, t_end, k) for k = student_steps; the ablation `score_decomposition=False`
   takes one step 1 -> t_end), remaining masks filled from the last step's prediction -> x̂0;
4. x̂0 and the real rows are masked with alpha_tau (coupled time; independent draws of the masks);
5. one discriminator update (BCE with label smoothing over the masked positions of each side);
6. reward r = mean over the student side's masked positions of the clipped logit of the updated
   discriminator (= -R: log q_real / q_student);
7. A = grouped normalization of r;
8. w(tau) = -alpha'/(1 - alpha) clamped, optionally divided by the Beta density;
9. student loss = -mean(w A log p(x̂0)) + kl_beta * (teacher || student KL per rollout step)
   - entropy_beta * H, one student update.

Choices where the spec is open (see also `DiDiInstructConfig`):
- log p(x̂0) sums, over the rollout steps, log p_nu(v | z_t) of every token v that was unmasked in that
  step at a position masked before it. The "stays masked" outcome has probability
  (1 - alpha_s) / (1 - alpha_t), independent of the student, so it contributes no gradient and is left
  out; likewise the step factor (alpha_s - alpha_t) / (1 - alpha_t) (a constant). The gradient is the
  same as with the full transition log-probability.
- Masks left after the last step are filled from that step's prediction p_nu(x0 | z_t) (no extra
  forward pass): `final_fill="sample"` (default: x̂0 is an exact sample of the policy and the filled
  tokens count in log p) or `"argmax"` (filled tokens are deterministic and carry no log-prob).
- The rollout is drawn without gradient; log p, the KL terms and the entropy are then computed in ONE
  student forward over the distinct rollout states (the all-masked x_1 is the same for every row, so it
  is one row). One forward per backward keeps DDP simple. With dropout > 0 the two passes use different
  dropout masks (the official small config trains the student with dropout 0.1; tiny configs use 0).
- Categorical draws are float64 (`sample_categorical`) from a per-rank generator seeded by the step's
  global generator; tau, the masking noise and the real-side noise are drawn for the global batch and
  sliced, as in MDLM.
- Group normalization is local to each group of G rows (one rank), with the population std; rows with
  no masked position get A = 0 and are left out of their group's statistics. `group_norm=False` uses
  A = r - mean(r) over the global batch (all-reduced).
- The discriminator loss is 0.5 * (mean BCE over real masked positions + mean BCE over student masked
  positions), pooled over the rows of this rank.
- The reward is computed with the discriminator in eval mode (no dropout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check_fields
from ..diffusion import Kept, LogLinearSchedule, mask_tokens, masked_log_probs, nelbo_terms
from ..errors import DidiError
from ..sampling import ancestral_sample, sample_categorical, time_grid
from .mdlm import MDLM


@dataclass
class DiDiInstructConfig:
    """DiDi-Instruct's own settings (`distill.didi.*`). Defaults follow the authors' final config unless noted; the
    options beyond the paper sit together at the end."""

    group: int = 4  # rollouts per real sequence: the normalization group (N = batch_size * group rollouts a step)
    # rollout
    student_steps: int = 2  # ancestral steps 1 -> tau -> ... -> t_end (k > 2: linspace(tau, t_end, k) after tau)
    score_decomposition: bool = True  # False = ablation: one step 1 -> t_end
    rollout_grid: str = "tau"  # "tau": 1 -> tau -> ... (paper); "sampler": the k-step sampler's
    # grid, time_grid(k, t_end, diffusion.grid_power) (tau then only sets the coupled masking level)
    final_fill: str = "sample"  # masks left after the last step: "sample" (counted in log p) or "argmax"
    tau_a: float = 1.0  # tau ~ Beta(a, b) (Beta(2, 2) in earlier configs)
    tau_b: float = 1.0
    tau_min: float = 0.02
    tau_max: float = 0.98
    coupled_time: bool = True  # False: the real side gets its own tau
    # discriminator
    real: str = "data"  # "data" (released code) or "teacher" (paper text: teacher ancestral samples)
    teacher_steps: int = 16  # ancestral steps for real="teacher"
    label_smoothing: float = 0.1
    disc_lr: float = 1e-5
    disc_betas: tuple[float, float] = (0.9, 0.999)
    disc_weight_decay: float = 0.0
    disc_clip: float = 1.0
    disc_only_steps: int = 0  # warm-up iterations in which only the discriminator trains
    disc_trainable_blocks: int = 4
    disc_time_conditioning: bool = True
    # reward and policy gradient
    reward_clip: float = 8.0
    group_norm: bool = True  # False: A = r - mean(r)
    adv_clip: float = 3.0
    time_weight: bool = True  # w(tau) = -alpha'/(1 - alpha) clamped; False: w = 1
    w_min: float = 0.1
    w_max: float = 10.0
    importance_weight: bool = False  # divide w by the Beta density pi(tau)
    # regularization (released values conflict: kl_beta 0.05 or 1.0, entropy_beta 0.0005 or 0.02)
    kl_beta: float = 0.05
    kl_step_weight: float = 0.01  # weight of each rollout step's KL(teacher || student)
    entropy_beta: float = 0.0005

    # ---- beyond the paper (experimental: measured in docs/reference-log.md; the defaults are the paper's) ----
    reward_states: str = "final"  # "final": x̂0 masked at tau (coupled time, paper); "path": every rollout state
    # against real rows masked to its time
    path_credit: str = "togo"  # path: a step's decisions get the rewards of every later state ("togo") or of the
    # state right after the step ("step")
    # where the reward comes from: "discriminator" (paper) or "teacher" (no discriminator; each rollout's reward is
    # the teacher's evidence bound -NELBO(x̂0) in nats, over reward_repeats noise draws stratified in t, so with
    # entropy_reward=1 it is a one-sample estimate of -KL(student || teacher) of the clean texts; with
    # reward_states=path every step gets the final text's reward as its reward-to-go)
    reward_source: str = "discriminator"  # "discriminator" (paper) or "teacher" (its evidence bound)
    reward_repeats: int = 8  # reward_source="teacher": noise draws per rollout
    # add this times the rollout's own surprisal -log q (the summed log-probabilities of the tokens it drew, with the
    # rewards' credit: path rewards give step s the surprisal of steps s..k) to the reward: the student-entropy half
    # of the reverse KL, computed exactly, where the discriminator's log-ratio carries it only as an estimate; unlike
    # entropy_beta it does not penalize sharper marginals at positions a step leaves masked (0 = off)
    entropy_reward: float = 0.0  # weight of the rollout's exact surprisal in the reward
    # for a student with a code input (distill.student_noise_dim > 0): "independent" (every rollout draws its own xi)
    # or "shared" (the G rollouts of a group share one xi, so the group's mean reward is a baseline per code)
    group_noise: str = "independent"  # "independent" or "shared" (one code per group)
    # what the KL term pulls the student toward: "teacher" (paper: KL(teacher || student) on the rollout's states) or
    # "init" (a frozen copy of the student as it started, its noise map and xi included), an anchor that keeps a
    # student started from a better point (distill.student_init) near that point rather than pulling it back
    kl_reference: str = "teacher"  # "teacher" (paper) or "init" (the starting student)

    def validate(self, d) -> None:
        """Check this section against the whole DistillConfig `d` (the shared fields it reads)."""
        ranges = [("group", self.group >= 1, ">= 1"), ("disc_lr", self.disc_lr > 0, "> 0"),
                  ("disc_clip", self.disc_clip >= 0, ">= 0"),
                  ("label_smoothing", 0.0 <= self.label_smoothing < 0.5, "in [0, 0.5)"),
                  ("reward_clip", self.reward_clip > 0, "> 0"), ("adv_clip", self.adv_clip > 0, "> 0"),
                  ("kl_beta", self.kl_beta >= 0, ">= 0"), ("entropy_beta", self.entropy_beta >= 0, ">= 0"),
                  ("teacher_steps", self.teacher_steps >= 1, ">= 1"),
                  ("disc_only_steps", self.disc_only_steps >= 0, ">= 0"),
                  ("disc_trainable_blocks", self.disc_trainable_blocks >= 0, ">= 0"),
                  ("tau_a", self.tau_a > 0, "> 0"), ("tau_b", self.tau_b > 0, "> 0"),
                  ("tau_min", 0 < self.tau_min <= self.tau_max < 1, "> 0 and <= tau_max < 1"),
                  ("w_min", 0 < self.w_min <= self.w_max, "> 0 and <= w_max"),
                  ("entropy_reward", self.entropy_reward >= 0, ">= 0"),
                  ("reward_repeats", self.reward_repeats >= 1, ">= 1")]
        choices = [("real", ("data", "teacher")), ("final_fill", ("sample", "argmax")),
                   ("path_credit", ("togo", "step")), ("group_noise", ("independent", "shared")),
                   ("reward_states", ("final", "path")),
                   ("rollout_grid", ("tau", "sampler")), ("reward_source", ("discriminator", "teacher")),
                   ("kl_reference", ("teacher", "init"))]
        check_fields(self, "distill.didi.", ranges, choices)
        if self.group == 1 and self.group_norm:
            raise DidiError("distill.didi.group = 1: advantages are normalized within each group, so a group of one "
                            "gives a policy gradient of exactly zero; use group >= 2")
        if self.score_decomposition and self.student_steps < 2:
            raise DidiError("distill.didi: score decomposition needs student_steps >= 2")
        if self.group_noise == "shared" and not d.student_noise_dim:
            raise DidiError("distill.didi.group_noise='shared' needs a student with a noise input "
                            "(distill.student_noise_dim > 0)")

# -- the estimator's pieces, as plain functions (tested on toy problems) -------------------------------


def group_normalize(r: torch.Tensor, group: int, clip: float = 3.0, eps: float = 1e-8,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """A = clip((r - mean_g) / (std_g + eps), -clip, clip) over consecutive groups of `group` rows.

    std is the population std (so the normalized values have std 1 in each group). Rows with
    valid=False get A = 0 and are left out of their group's mean and std.
    """
    rg = r.reshape(-1, group).double()
    v = torch.ones_like(rg, dtype=torch.bool) if valid is None else valid.reshape(-1, group)
    vf = v.double()
    n = vf.sum(1, keepdim=True).clamp_min(1)
    mean = (rg * vf).sum(1, keepdim=True) / n
    std = (((rg - mean) ** 2 * vf).sum(1, keepdim=True) / n).sqrt()
    a = ((rg - mean) / (std + eps)).clamp(-clip, clip) * vf
    return a.reshape(r.shape).to(r.dtype)


def within_group_share(r: torch.Tensor, group: int) -> torch.Tensor:
    """The share of r's variance [N] that lies within consecutive groups of `group` rows (1: the groups' means are
    equal; 0: every group is constant): what a per-group baseline leaves of the reward's spread."""
    rg = r.reshape(-1, group).double()
    total = rg.var(unbiased=False)
    return (rg.var(1, unbiased=False).mean() / total.clamp_min(1e-12)).float()


def time_weight(tau: torch.Tensor, schedule: LogLinearSchedule, lo: float = 0.1, hi: float = 10.0) -> torch.Tensor:
    """w(tau) = -alpha'(tau) / (1 - alpha(tau)), clamped to [lo, hi] (about 1/tau for log-linear)."""
    return (-schedule.loss_weight(tau)).clamp(lo, hi)


def beta_pdf(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    x = x.double()
    log_b = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return torch.exp((a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x) - log_b).float()


def policy_gradient_loss(logp: torch.Tensor, advantage: torch.Tensor, weight: torch.Tensor | float = 1.0
                         ) -> torch.Tensor:
    """-mean(w * A * log p): descending it raises E[A] (A is the reward-to-go, here log q_real/q_student)."""
    return -(weight * advantage.detach() * logp).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_mask: torch.Tensor,
                       fake_mask: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Per-token BCE with label smoothing (real -> 1 - s, student -> s), averaged over each side's masked
    positions, then over the two sides. Its optimum logit is log((1-s) q_r + s q_f) - log(s q_r + (1-s) q_f)
    (the log ratio log q_r/q_f when s = 0)."""
    def side(logits, mask, label):
        bce = F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, label, dtype=torch.float32),
                                                 reduction="none")
        m = mask.float()
        return (bce * m).sum() / m.sum().clamp_min(1)
    return 0.5 * (side(real_logits, real_mask, 1 - smoothing) + side(fake_logits, fake_mask, smoothing))


def row_step_probs(logp: torch.Tensor, alpha_t: torch.Tensor, alpha_s: torch.Tensor, mask_id: int) -> torch.Tensor:
    """`sampling.step_probs` with per-row times: logp [n, V+1], alpha_t / alpha_s [n] -> float64 [n, V+1]."""
    q = logp.double().exp() * (alpha_s - alpha_t).double()[:, None]
    q[:, mask_id] = (1 - alpha_s).double()
    return q


@torch.no_grad()
def teacher_evidence(teacher, x: torch.Tensor, schedule: LogLinearSchedule, mask_id: int, eps: float, repeats: int,
                     gen: torch.Generator, keep: torch.Tensor | None = None) -> torch.Tensor:
    """-NELBO of each row of x [N, L] under `teacher`, summed over positions (nats; a lower bound on log p(x)),
    averaged over `repeats` draws of (t, mask) with t stratified per row: t_r = (u + r / R) mod 1, u ~ U[0, 1).
    keep [N, L]: positions never masked (they add nothing). One teacher forward over N * R rows -> float32 [N]."""
    n, length = x.shape
    dev = x.device
    u = torch.rand(n, 1, generator=gen, dtype=torch.float64, device=gen.device).to(dev)
    r = (u + torch.arange(repeats, dtype=torch.float64, device=dev)[None] / repeats) % 1.0
    t = ((1 - eps) * r + eps).float().reshape(-1)
    rows = x.repeat_interleave(repeats, 0)
    noise = torch.rand(n * repeats, length, generator=gen, device=gen.device).to(dev)
    if keep is not None:
        noise = noise.masked_fill(keep.repeat_interleave(repeats, 0), 0)
    terms = -nelbo_terms(teacher, rows, t, noise, schedule, mask_id).double().reshape(n, repeats, length).mean(1)
    return terms.sum(1).float()


# -- the method ----------------------------------------------------------------------------------------


class DiDiInstruct:
    name = "didi-instruct"
    eval_part = "student"
    progress_keys = ("disc_loss", "reward_mean", "loss", "kl", "tokens_per_s")

    @classmethod
    def build(cls, s):
        """The method, the parts it trains (the student and, unless the teacher gives the reward, the
        discriminator) and its banner, from a StudentSetup."""
        from ..nn.discriminator import Discriminator

        d = s.dcfg
        frozen = s.frozen_teacher()
        method = cls(s.cfg, d, s.tok.mask_id, frozen, s.keep,
                     kl_ref=s.kl_ref.to(s.device) if s.kl_ref is not None else None, prior=s.prior)
        specs = {"student": s.student_spec}
        what = "the teacher's evidence as the reward"
        if d.didi.reward_source == "discriminator":  # reward_source "teacher" reads no discriminator: none is built
            c = d.didi
            disc = Discriminator.from_teacher(s.teacher_model, c.disc_trainable_blocks, c.disc_time_conditioning)
            specs["discriminator"] = s.part(disc, c.disc_lr, betas=tuple(c.disc_betas),
                                            weight_decay=c.disc_weight_decay, grad_clip=c.disc_clip)
            what = f"discriminator trains {sum(p.numel() for p in disc.parameters() if p.requires_grad) / 1e6:.2f} M"
        torch.manual_seed(s.cfg.train.seed + s.rank)  # dropout differs per rank
        banner = (f"didi: distilling {s.teacher} ({s.n_student:.2f} M parameters; {what}) with "
                  f"{d.batch_size}x{d.didi.group} rollouts per step, "
                  f"{d.didi.student_steps if d.didi.score_decomposition else 1}-step rollouts, device {s.device}, "
                  f"{s.world} process(es)")
        return method, specs, banner

    def __init__(self, cfg, dcfg, mask_id: int, teacher: torch.nn.Module, kept: Kept | None = None,
                 kl_ref: torch.nn.Module | None = None, prior=None):
        """kept: what is never masked (protein BOS/EOS/PAD, the first position of text rows): rollouts then start
        from each real row's kept tokens (a protein row's G rollouts have its length). kl_ref: the KL term's
        reference when it is not the teacher (dcfg.didi.kl_reference "init": the frozen starting student). prior: the
        `NoisePrior` rollouts draw the student's xi from (dcfg.noise_prior "init"); None: N(0, I)."""
        self.cfg, self.dcfg, self.mask_id = cfg, dcfg, mask_id
        self.kept = kept or Kept()
        self.teacher = teacher.eval().requires_grad_(False)
        self.kl_ref = kl_ref.eval().requires_grad_(False) if kl_ref is not None else None
        self.prior = prior
        self.schedule = LogLinearSchedule(cfg.diffusion.eps)
        dcfg.validate()

    # -- randomness: global draws sliced to this rank --------------------------------------------------
    def draw(self, generator: torch.Generator, global_batch: int, length: int, rank: int, world: int, device):
        d = self.dcfg
        n_glob = global_batch * d.didi.group
        np_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rank_seeds = torch.randint(0, 2**62, (world,), generator=generator)
        noise_fake = torch.rand(n_glob, length, generator=generator)
        noise_real = torch.rand(n_glob, length, generator=generator)
        pick = torch.rand(n_glob, generator=generator)  # reward_states="path": which state the discriminator trains on
        noise = None
        if d.student_noise_dim:  # group_noise "shared": one xi per group of G consecutive rollouts
            per_draw = d.didi.group if d.didi.group_noise == "shared" else 1
            if self.prior is not None:
                noise = self.prior.sample(n_glob // per_draw, generator)
            else:
                noise = torch.randn(n_glob // per_draw, d.student_noise_dim, generator=generator)
            noise = noise.repeat_interleave(per_draw, 0)
        rng = np.random.default_rng(np_seed)
        tau = np.clip(rng.beta(d.didi.tau_a, d.didi.tau_b, size=n_glob), d.didi.tau_min, d.didi.tau_max)
        tau_real = np.clip(rng.beta(d.didi.tau_a, d.didi.tau_b, size=n_glob), d.didi.tau_min, d.didi.tau_max)
        per = n_glob // world
        sl = slice(rank * per, (rank + 1) * per)
        gdev = torch.device(device)
        rgen = torch.Generator(gdev if gdev.type == "cuda" else "cpu").manual_seed(int(rank_seeds[rank]))
        return {
            "tau": torch.from_numpy(tau[sl]).float().to(device),
            "tau_real": torch.from_numpy(tau_real[sl]).float().to(device),
            "noise_fake": noise_fake[sl].to(device), "noise_real": noise_real[sl].to(device), "gen": rgen,
            "pick": pick[sl].to(device), "noise": None if noise is None else noise[sl].to(device),
        }

    def times(self, tau: torch.Tensor) -> torch.Tensor:
        """The rollout grid per row [N, k+1]: 1 -> tau -> linspace(tau, t_end, k)[1:], or 1 -> t_end, or (grid
        "sampler") the k-step sampler's grid `time_grid(k, t_end, diffusion.grid_power)`."""
        d = self.dcfg
        n = tau.shape[0]
        if not d.didi.score_decomposition:
            return torch.tensor([1.0, d.t_end], device=tau.device).expand(n, 2).clone()
        if d.didi.rollout_grid == "sampler":
            grid = time_grid(d.didi.student_steps, d.t_end, self.cfg.diffusion.grid_power).float().to(tau.device)
            return grid.expand(n, -1).clone()
        frac = torch.linspace(0, 1, d.didi.student_steps, device=tau.device)  # k-1 steps from tau to t_end
        tail = tau[:, None] + (d.t_end - tau[:, None]) * frac[None]
        return torch.cat([torch.ones(n, 1, device=tau.device), tail], 1)

    # -- rollout ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, student, n: int, length: int, grid: torch.Tensor, gen, device,
                init: torch.Tensor | None = None, shared_first: bool = True, noise: torch.Tensor | None = None):
        """Student ancestral rollout without gradient, from all masks (or from `init`, masks and kept tokens; with
        `shared_first` every row starts the same, so the first forward runs on one row; noise: the student's
        per-row noise input, fixed over the rollout).
        Returns x̂0, the pre-step states, per step the positions whose token this step decided (and whose
        log-prob counts), and per step the summed log-probabilities of those tokens [n, k] (float32)."""
        mask = self.mask_id
        z = torch.full((n, length), mask, dtype=torch.long, device=device) if init is None else init.clone()
        states, decided = [], []
        k = grid.shape[1] - 1
        logp_steps = torch.zeros(n, k, device=device)
        for j in range(k):
            t, s = grid[:, j], grid[:, j + 1]
            states.append(z.clone())
            if j == 0 and shared_first:  # every row is the same first state: one row suffices
                logits = student(z[:1], self.schedule.sigma(t[:1])).float().expand(n, -1, -1)
            elif noise is not None:
                logits = student(z, self.schedule.sigma(t), noise).float()
            else:
                logits = student(z, self.schedule.sigma(t)).float()
            masked = z == mask
            logp = masked_log_probs(logits[masked], mask, inplace=True)
            rows = torch.arange(n, device=device)[:, None].expand(n, length)[masked]
            q = row_step_probs(logp, self.schedule.alpha(t)[rows], self.schedule.alpha(s)[rows], mask)
            new = sample_categorical(q, gen).to(device)
            newly = new != mask
            if j == k - 1:  # fill what is left from this step's prediction (no extra forward pass)
                left = ~newly
                if left.any():
                    if self.dcfg.didi.final_fill == "argmax":
                        new[left] = logp[left].argmax(-1)
                    else:
                        new[left] = sample_categorical(logp[left].double().exp(), gen).to(device)
                        newly = torch.ones_like(newly)
            dec = torch.zeros_like(masked)
            dec[masked] = newly
            z[masked] = new
            decided.append(dec)
            picked = logp.gather(-1, new[:, None]).squeeze(-1)[newly]  # what the loss counts (as dec)
            logp_steps[:, j].index_add_(0, rows[newly], picked.float())
        return z, states, decided, logp_steps

    # -- one iteration ---------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, generator: torch.Generator, ctx) -> dict:
        d, mask, sched = self.dcfg, self.mask_id, self.schedule
        device = x.device
        B, L = x.shape
        G = d.didi.group
        N = B * G
        draws = self.draw(generator, ctx.global_batch, L, ctx.dist.rank, ctx.dist.world, device)
        tau, gen = draws["tau"], draws["gen"]
        student_part = ctx.parts["student"]
        student = student_part.module

        # 3. rollout (no gradient)
        grid = self.times(tau)
        init = None
        if self.kept:  # each real row's kept tokens (BOS, EOS, PAD; the first position), G times
            init = torch.where(self.kept(x), x, torch.full_like(x, mask)).repeat_interleave(G, 0)
        noise = draws["noise"]  # the student's own randomness (None: the paper's student)
        # one all-masked first state for every row (not with noise: then every row's first output differs)
        shared_first = noise is None and (init is None or bool((init == init[:1]).all()))
        with ctx.autocast():
            x_hat, states, decided, logp_steps = self.rollout(student, N, L, grid, gen, device, init, shared_first,
                                                              noise)
        # the trajectory's own surprisal -log q per step: with entropy_reward > 0 it joins the reward (the
        # student-entropy half of the reverse KL, exact where the discriminator's log-ratio is an estimate)
        surprisal = -logp_steps

        # 4-6. discriminator update and rewards -> advantage of every rollout step's decisions [N, k]
        if d.didi.reward_source == "teacher":  # no discriminator, so no real side
            adv_steps, metrics = self._teacher_rewards(ctx, x_hat, len(states), gen, surprisal)
        else:
            real, noise_fake, noise_real = self._real_side(x, x_hat, draws, gen)
            if d.didi.reward_states == "path":
                adv_steps, metrics = self._path_rewards(ctx, states, x_hat, grid, real, noise_real, draws["pick"],
                                                        surprisal)
            else:
                adv_steps, metrics = self._final_rewards(ctx, x_hat, real, tau, draws["tau_real"], noise_fake,
                                                         noise_real, len(states), surprisal)
        # iterations completed so far (the discriminator trains every one)
        warming = d.didi.reward_source == "discriminator" and (
            ctx.parts["discriminator"].scheduler.last_epoch <= d.didi.disc_only_steps)
        if warming:
            zero = torch.zeros((), device=device)
            metrics.update(loss=zero, pg=zero, kl=zero, entropy=zero, logp=zero, grad_norm=zero)
            return {k: float(ctx.all_mean(torch.as_tensor(v, device=device).float())) for k, v in metrics.items()}

        # 9. student loss: one forward over the distinct rollout states (x_1 once, then N rows per later step)
        if shared_first:
            inputs = torch.cat([states[0][:1]] + states[1:])
            t_in = torch.cat([grid[:1, 0]] + [grid[:, j] for j in range(1, len(states))])
        else:
            inputs = torch.cat(states)
            t_in = torch.cat([grid[:, j] for j in range(len(states))])
        sigma_in = sched.sigma(t_in)
        noise_in = () if noise is None else (noise.repeat(len(states), 1),)
        with ctx.autocast():
            s_logits = student_part.wrapped(inputs, sigma_in, *noise_in)
        with torch.no_grad(), ctx.autocast():  # the KL's reference: the teacher, or the starting student with its xi
            if self.kl_ref is None:
                t_logits = self.teacher(inputs, sigma_in)
            else:
                t_logits = self.kl_ref(inputs, sigma_in, *noise_in)
        logp_steps = []
        kl_total = torch.zeros((), device=device)
        ent_sum, ent_count = torch.zeros((), device=device), 0.0
        offset = 1 if shared_first else 0
        for j, (z_j, dec_j) in enumerate(zip(states, decided)):
            if j == 0 and shared_first:
                lp = masked_log_probs(s_logits[0], mask)  # [L, V+1]
                lt = masked_log_probs(t_logits[0], mask)
                picked = lp[torch.arange(L, device=device)[None].expand(N, L), x_hat]  # [N, L]
                kl_j = (lt.exp() * (lt - lp)).sum(-1).mean()  # every position of x_1 is masked
                ent_sum = ent_sum + N * (-(lp.exp() * lp).sum(-1)).sum()
                ent_count += N * L
            else:
                lp = masked_log_probs(s_logits[offset:offset + N], mask)  # [N, L, V+1]
                lt = masked_log_probs(t_logits[offset:offset + N], mask)
                offset += N
                picked = lp.gather(-1, x_hat[..., None]).squeeze(-1)
                m = (z_j == mask).float()
                kl_pos = (lt.exp() * (lt - lp)).sum(-1)
                ent_pos = -(lp.exp() * lp).sum(-1)
                kl_j = (kl_pos * m).sum() / m.sum().clamp_min(1)
                ent_sum = ent_sum + (ent_pos * m).sum()
                ent_count += float(m.sum())
            logp_steps.append(picked * dec_j.float())  # [N, L]: the log-probs of this step's decisions
            kl_total = kl_total + d.didi.kl_step_weight * kl_j
        entropy = ent_sum / max(ent_count, 1.0)
        logp_tok = torch.stack(logp_steps, 1)  # [N, k, L]
        logp_rows = logp_tok.sum((1, 2))
        pg = policy_gradient_loss(logp_tok.sum(2), adv_steps) * logp_tok.shape[1]  # mean over rows of the step sum
        loss = pg + d.didi.kl_beta * kl_total - d.didi.entropy_beta * entropy
        grad_norm = ctx.update("student", loss)
        metrics.update(loss=loss.detach(), pg=pg.detach(), kl=kl_total.detach(), entropy=entropy.detach(),
                       logp=logp_rows.detach().mean(), grad_norm=torch.tensor(grad_norm))
        if noise is not None:  # how strongly the student's conditioning depends on its noise (Frobenius norm)
            metrics["noise_map_norm"] = student.noise_map.weight.detach().norm()
        return {k: float(ctx.all_mean(torch.as_tensor(v, device=device).float())) for k, v in metrics.items()}

    def _real_side(self, x, x_hat, draws, gen):
        """The discriminator's real rows (the data, or teacher samples), G times each, and both sides' masking noise
        with kept tokens never masked."""
        d, mask = self.dcfg, self.mask_id
        B, L = x.shape
        if d.didi.real == "teacher":
            real = ancestral_sample(lambda z, sg: self.teacher(z, sg), B, L, d.didi.teacher_steps, mask,
                                    schedule=self.schedule, cache=not self.cfg.model.time_conditioning,
                                    generator=gen, device=x.device).tokens.to(x.device)
        else:
            real = x
        real = real.repeat_interleave(d.didi.group, 0)
        noise_fake, noise_real = draws["noise_fake"], draws["noise_real"]
        if self.kept:  # noise 0 < alpha: kept tokens stay
            noise_fake = noise_fake.masked_fill(self.kept(x_hat), 0)
            noise_real = noise_real.masked_fill(self.kept(real), 0)
        return real, noise_fake, noise_real

    def _disc_update(self, ctx, z_real, z_fake, sig_r, sig_f, m_real, m_fake) -> dict:
        """One discriminator step on the two sides (BCE with label smoothing over the counted positions)."""
        N = z_fake.shape[0]
        with ctx.autocast():
            logits = ctx.parts["discriminator"].wrapped(torch.cat([z_real, z_fake]), torch.cat([sig_r, sig_f])).float()
        l_real, l_fake = logits[:N], logits[N:]
        disc_loss = discriminator_loss(l_real, l_fake, m_real, m_fake, self.dcfg.didi.label_smoothing)
        with torch.no_grad():
            correct = ((l_real > 0) & m_real).sum() + ((l_fake < 0) & m_fake).sum()
            disc_acc = correct.float() / (m_real.sum() + m_fake.sum()).clamp_min(1).float()
        disc_grad = ctx.update("discriminator", disc_loss)
        return {"disc_loss": disc_loss.detach(), "disc_acc": disc_acc, "disc_grad_norm": torch.tensor(disc_grad)}

    @torch.no_grad()
    def _rewards(self, ctx, z: torch.Tensor, sigma: torch.Tensor, counted: torch.Tensor | None) -> torch.Tensor:
        """Per row: the updated discriminator's clipped logit (eval mode) averaged over the counted positions
        (counted=None: the per-position logits [n, L])."""
        disc = ctx.parts["discriminator"].module
        was = disc.training
        disc.eval()
        with ctx.autocast():
            logits = disc(z, sigma).float().clamp(-self.dcfg.didi.reward_clip, self.dcfg.didi.reward_clip)
        disc.train(was)
        if counted is None:
            return logits
        return (logits * counted).sum(1) / counted.sum(1).clamp_min(1)

    def _advantage(self, ctx, r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        d = self.dcfg
        if not d.didi.group_norm:
            return (r - ctx.all_mean(r.mean())) * valid
        return group_normalize(r, d.didi.group, d.didi.adv_clip, valid=valid)

    def _final_rewards(self, ctx, x_hat, real, tau, tau_real, noise_fake, noise_real, k: int, surprisal=None):
        """The paper's reward: x̂0 and the real rows masked with alpha_tau (coupled time), the discriminator judges
        the masked positions; one advantage per rollout (times w(tau)) for the decisions of every step."""
        d, mask, sched = self.dcfg, self.mask_id, self.schedule
        tau_r = tau if d.didi.coupled_time else tau_real
        z_fake = mask_tokens(x_hat, sched.alpha(tau), mask, noise_fake)
        z_real = mask_tokens(real, sched.alpha(tau_r), mask, noise_real)
        m_fake, m_real = z_fake == mask, z_real == mask
        sig_f = sched.sigma(tau)
        metrics = self._disc_update(ctx, z_real, z_fake, sched.sigma(tau_r), sig_f, m_real, m_fake)
        r = self._rewards(ctx, z_fake, sig_f, m_fake)
        metrics["reward_mean"] = r.mean()
        metrics["reward_within_share"] = within_group_share(r, d.didi.group)
        if d.didi.entropy_reward and surprisal is not None:  # the whole rollout's surprisal -log q(x̂0's trajectory)
            metrics["surprisal"] = surprisal.sum(1).mean()
            r = r + d.didi.entropy_reward * surprisal.sum(1)
        adv = self._advantage(ctx, r, m_fake.any(1))
        w = time_weight(tau, sched, d.didi.w_min, d.didi.w_max) if d.didi.time_weight else torch.ones_like(tau)
        if d.didi.importance_weight:
            w = w / beta_pdf(tau, d.didi.tau_a, d.didi.tau_b).clamp_min(1e-6)
        return (w * adv)[:, None].expand(-1, k), metrics

    def _path_rewards(self, ctx, states, x_hat, grid, real, noise_real, pick, surprisal=None):
        """Rewards on the rollout's own states: the state after each step s (z_{t_{s+1}}, the last one x̂0) against
        real rows masked to the same time, every position judged. The discriminator trains on one state per row
        (drawn uniformly); the rewards of all k states give each step's decisions the reward-to-go
        sum_{s' >= s} r_{s'} (path_credit "togo") or the reward of the state it made ("step"), plus entropy_reward
        times the surprisal -log q of the decisions from step s on (`surprisal` [N, k], the same credit), normalized
        per step within the group."""
        mask, sched = self.mask_id, self.schedule
        post = torch.stack(states[1:] + [x_hat])  # [k, N, L]
        k, N, L = post.shape
        t_post = grid[:, 1:].clone()  # [N, k]
        t_post[:, -1] = 0.0  # x̂0 has no mask left (the fill): its real counterpart is unmasked data
        rows = torch.arange(N, device=post.device)
        j = (pick * k).long().clamp_max(k - 1)
        t_j = t_post[rows, j]
        z_real = mask_tokens(real, sched.alpha(t_j), mask, noise_real)
        every = torch.ones_like(z_real, dtype=torch.bool)
        sig_j = sched.sigma(t_j)
        metrics = self._disc_update(ctx, z_real, post[j, rows], sig_j, sig_j, every, every)
        r_tok = self._rewards(ctx, post.reshape(k * N, L), sched.sigma(t_post.T.reshape(-1)), None)
        r_tok = r_tok.reshape(k, N, L).transpose(0, 1)  # [N, k, L]
        metrics["reward_mean"] = r_tok.mean()
        r = r_tok.mean(2)  # [N, k]
        metrics["reward_within_share"] = within_group_share(r.sum(1), self.dcfg.didi.group)
        if self.dcfg.didi.entropy_reward and surprisal is not None:
            metrics["surprisal"] = surprisal.sum(1).mean()
            r = r + self.dcfg.didi.entropy_reward * surprisal
        togo = r.flip(1).cumsum(1).flip(1) if self.dcfg.didi.path_credit == "togo" else r
        valid = torch.ones(N, dtype=torch.bool, device=post.device)
        adv = torch.stack([self._advantage(ctx, togo[:, s], valid) for s in range(k)], 1)
        return adv, metrics

    def _teacher_rewards(self, ctx, x_hat, k: int, gen, surprisal=None):
        """reward_source="teacher": r = the teacher's evidence bound -NELBO(x̂0) (nats, `teacher_evidence`), plus
        entropy_reward times the surprisal of the decisions from each step on; every step's decisions get the final
        text's reward as their reward-to-go (with reward_states="final": the whole rollout's surprisal, one
        advantage), normalized per step like the discriminator's rewards. No discriminator trains."""
        d = self.dcfg
        keep = self.kept(x_hat) if self.kept else None
        with ctx.autocast():
            r = teacher_evidence(self.teacher, x_hat, self.schedule, self.mask_id, self.cfg.diffusion.eps,
                                 d.didi.reward_repeats, gen, keep)
        n = x_hat.shape[0]
        metrics = {"reward_mean": r.mean(), "teacher_nelbo": -r.mean() / x_hat.shape[1],
                   "reward_within_share": within_group_share(r, d.didi.group)}
        togo = r[:, None].expand(n, k)
        if d.didi.entropy_reward and surprisal is not None:
            metrics["surprisal"] = surprisal.sum(1).mean()
            if d.didi.reward_states == "path":
                togo = togo + d.didi.entropy_reward * surprisal.flip(1).cumsum(1).flip(1)
            else:
                togo = togo + d.didi.entropy_reward * surprisal.sum(1, keepdim=True)
        valid = torch.ones(n, dtype=torch.bool, device=x_hat.device)
        adv = torch.stack([self._advantage(ctx, togo[:, s], valid) for s in range(k)], 1)
        return adv, metrics

    # -- validation and exports ------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, model, batches, seed: int) -> dict:
        """The student's NELBO per token on held-out data, scored exactly as the teacher's is (`MDLM.validate`: kept
        positions neither masked nor counted), so the two are comparable; it drifts up as the student distils."""
        return MDLM(self.cfg, self.mask_id, self.kept).validate(model, batches, seed)

    def exports(self) -> dict:
        from .. import runs

        out = {runs.WEIGHTS: ("student", lambda m: m.state_dict())}
        if self.dcfg.didi.reward_source == "discriminator":
            out["discriminator.safetensors"] = ("discriminator", lambda m: m.state_dict())
        return out

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
