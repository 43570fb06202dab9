"""DiDi-Instruct distillation of a trained MDLM teacher run into a few-step student run (arXiv 2509.25035).

The output is an ordinary didi run directory: `config.json` (the teacher's RunConfig, with the
distillation settings under "distill"), `tokenizer/`, `model.safetensors` (the student's EMA weights:
`didi.load(out)` samples from it without the teacher), `discriminator.safetensors` (official names, for
reward-guided sampling, `didi.guidance`), `checkpoint.pt` and `metrics.jsonl`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import fileio, runs
from .config import RunConfig, _from_dict, apply_overrides
from .errors import DidiError
from .methods import STUDENTS, StudentSetup, method_class

DISCRIMINATOR = "discriminator.safetensors"
METHODS = tuple(STUDENTS)  # distill methods, registered in `didi.methods` beside the teachers' (`make_method`)


@dataclass
class DMMDConfig:
    """D-MMD's own settings (`method="dmmd"`, `methods.dmmd`); the student's optimizer, schedule and EMA are
    DistillConfig's student_* fields, its start student_init. Defaults: the most natural reading of the sources."""

    steps: int = 4  # the student is trained for this many sampler steps (its grid: time_grid(steps, t_end, grid power))
    states: str = "data"  # z_t: "data" (masked real rows, as moment matching does) or "student" (its own k-step states)
    z_s: str = "sample"  # the step's revealed positions hold the drawn token ("sample") or its probabilities ("probs")
    weight: str = "mean"  # "mean" over the scored positions of the batch, or "elbo" (-alpha'/(1-alpha) at s, clamped)
    aux_lr: float = 1e-4
    aux_updates: int = 1  # auxiliary updates per student update, each on fresh states
    aux_init: str = "teacher"  # the auxiliary starts as the teacher (reads no code) or as the student ("student")

    def validate(self) -> None:
        for name, allowed in (("states", ("data", "student")), ("z_s", ("sample", "probs")),
                              ("weight", ("mean", "elbo")), ("aux_init", ("teacher", "student"))):
            if getattr(self, name) not in allowed:
                raise DidiError(f"distill.dmmd.{name} must be {' or '.join(map(repr, allowed))}, not "
                                f"{getattr(self, name)!r}")
        for name, ok, what in (("steps", self.steps >= 1, ">= 1"), ("aux_lr", self.aux_lr > 0, "> 0"),
                               ("aux_updates", self.aux_updates >= 1, ">= 1")):
            if not ok:
                raise DidiError(f"distill.dmmd.{name} = {getattr(self, name)!r} is not allowed: it must be {what}")


@dataclass
class DistillConfig:
    """Every knob of DiDi-Instruct (and of the SDTT baseline, `method="sdtt"`); DiDi-Instruct
    defaults follow the authors' final config unless noted."""

    method: str = "didi-instruct"  # or "sdtt", "dmmd" (D-MMD, `methods.dmmd`), or "latent" (a latent-variable student)
    # run length and batch (B real sequences per step, global; N = B * group rollouts)
    max_steps: int = 10_000
    batch_size: int = 32
    group: int = 4
    # rollout
    student_steps: int = 2  # ancestral steps 1 -> tau -> ... -> t_end (k > 2: linspace(tau, t_end, k) after tau)
    score_decomposition: bool = True  # False = ablation: one step 1 -> t_end
    rollout_grid: str = "tau"  # "tau": 1 -> tau -> ... (paper); "sampler": the k-step sampler's
    # grid, time_grid(k, t_end, diffusion.grid_power) (tau then only sets the coupled masking level)
    t_end: float = 1e-3
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
    reward_states: str = "final"  # "final": x̂0 masked at tau (coupled time, paper); "path": every rollout state
    # against real rows masked to its time
    path_credit: str = "togo"  # path: a step's decisions get the rewards of every later state ("togo") or of the
    # state right after the step ("step")
    reward_clip: float = 8.0
    # where the reward comes from: "discriminator" (paper) or "teacher" (beyond the paper: no discriminator; each
    # rollout's reward is the teacher's evidence bound -NELBO(x̂0) in nats, over reward_repeats noise draws stratified
    # in t, so with entropy_reward=1 it is a one-sample estimate of -KL(student || teacher) of the clean texts; with
    # reward_states=path every step gets the final text's reward as its reward-to-go)
    reward_source: str = "discriminator"
    reward_repeats: int = 8
    group_norm: bool = True  # False: A = r - mean(r)
    adv_clip: float = 3.0
    time_weight: bool = True  # w(tau) = -alpha'/(1 - alpha) clamped; False: w = 1
    w_min: float = 0.1
    w_max: float = 10.0
    importance_weight: bool = False  # divide w by the Beta density pi(tau)
    # the student's own randomness (beyond the paper; 0 = the paper's student): a per-sequence Gaussian input of
    # this many dimensions (`DIT.add_noise_input`), fixed over a rollout, so tokens revealed in the same step can
    # agree with each other through it; its map starts at random with scale student_noise_init
    student_noise_dim: int = 0
    student_noise_init: float = 0.1
    # "independent" (every rollout draws its own xi) or "shared" (beyond the paper: the G rollouts of a group share one
    # xi, so the group's mean reward is a baseline per code: the same gradient with the between-code spread of the
    # reward taken out, and what the advantage ranks is how well the student decodes a given code)
    group_noise: str = "independent"
    # where rollouts draw the student's xi from: "normal" (N(0, I)) or "init" (beyond the paper: the prior saved beside
    # student_init by `didi prior`, a mixture fitted to a latent student's codes; the run keeps a copy, so sampling it
    # draws from the same prior)
    noise_prior: str = "normal"
    # where the student starts: "" = a copy of the teacher (paper); or a run directory of the same model shape and
    # tokenizer (an SDTT student, say) whose sampling weights start it. The teacher stays the discriminator's backbone
    # either way, and the KL reference unless kl_reference says otherwise
    student_init: str = ""
    # what the KL term pulls the student toward: "teacher" (paper: KL(teacher || student) on the rollout's states) or
    # "init" (beyond the paper: a frozen copy of the student as it started, its noise map and xi included), an anchor
    # that keeps a student started from a better point (student_init) near that point rather than pulling it back
    kl_reference: str = "teacher"
    # regularization (released values conflict: kl_beta 0.05 or 1.0, entropy_beta 0.0005 or 0.02)
    kl_beta: float = 0.05
    kl_step_weight: float = 0.01  # weight of each rollout step's KL(teacher || student)
    entropy_beta: float = 0.0005
    # beyond the paper (0 = off): add this times the rollout's own surprisal -log q (the summed log-probabilities of
    # the tokens it drew, with the rewards' credit: path rewards give step s the surprisal of steps s..k) to the
    # reward. It is the student-entropy half of the reverse KL, computed exactly, where the discriminator's log-ratio
    # carries it only as an estimate; unlike entropy_beta it does not penalize sharper marginals at positions a step
    # leaves masked, only less entropy in what is drawn
    entropy_reward: float = 0.0
    # student optimizer (lr about 1e-6 to 5e-6 at 169 M; 1e-5 for the tiny CPU scale)
    student_lr: float = 1e-5
    student_betas: tuple[float, float] = (0.9, 0.999)
    student_weight_decay: float = 0.0
    student_clip: float = 0.5
    ema: float = 0.999
    # both schedules: linear warm-up, then linear decay to min_lr_ratio
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    # SDTT (method="sdtt"): rounds halve the step count from start_steps to end_steps
    sdtt_start_steps: int = 1024
    sdtt_end_steps: int = 8
    sdtt_divergence: str = "reverse_kl"  # or "kl" (forward: teacher || student)
    # latent (method="latent", beyond the paper): the student as the decoder of a VAE over its noise input, trained
    # on the data with loss NELBO(x0 | xi) + latent_beta * KL(q(xi | x0) || N(0, I)) (per token); the encoder is the
    # teacher's embedding and first latent_encoder_blocks blocks. Needs student_noise_dim > 0
    latent_beta: float = 1.0
    latent_encoder_blocks: int = 2
    # the latent's training times: t = eps + (1 - eps) u^(1/p) for the (antithetic) uniform u, a density rising as
    # p t^(p-1): p > 1 trains more where few tokens are visible and the code must carry the text (1: MDLM's times)
    latent_time_power: float = 1.0
    dmmd: DMMDConfig = field(default_factory=DMMDConfig)  # method "dmmd"

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        """From a preset or a run's saved `distill` section (types checked, unknown keys refused; `teacher`, which a
        run saves beside the fields, is ignored)."""
        return _from_dict(cls, d, "distill.", extra=("teacher",))

    def validate(self) -> None:
        if self.method not in METHODS:
            raise DidiError(f"distill: method must be one of {', '.join(METHODS)}, not {self.method!r}")
        ranges = [("student_lr", self.student_lr > 0, "> 0"), ("disc_lr", self.disc_lr > 0, "> 0"),
                  ("ema", 0.0 <= self.ema < 1.0, "in [0, 1)"), ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                  ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "in [0, 1]"),
                  ("student_clip", self.student_clip >= 0, ">= 0"), ("disc_clip", self.disc_clip >= 0, ">= 0"),
                  ("label_smoothing", 0.0 <= self.label_smoothing < 0.5, "in [0, 0.5)"),
                  ("reward_clip", self.reward_clip > 0, "> 0"), ("adv_clip", self.adv_clip > 0, "> 0"),
                  ("kl_beta", self.kl_beta >= 0, ">= 0"), ("entropy_beta", self.entropy_beta >= 0, ">= 0"),
                  ("t_end", 0.0 < self.t_end < 1.0, "in (0, 1)"), ("teacher_steps", self.teacher_steps >= 1, ">= 1"),
                  ("disc_only_steps", self.disc_only_steps >= 0, ">= 0"),
                  ("disc_trainable_blocks", self.disc_trainable_blocks >= 0, ">= 0"),
                  ("tau_a", self.tau_a > 0, "> 0"), ("tau_b", self.tau_b > 0, "> 0"),
                  ("w_min", 0 < self.w_min <= self.w_max, "> 0 and <= w_max"),
                  ("student_noise_dim", self.student_noise_dim >= 0, ">= 0"),
                  ("entropy_reward", self.entropy_reward >= 0, ">= 0"),
                  ("reward_repeats", self.reward_repeats >= 1, ">= 1"),
                  ("student_noise_init", self.student_noise_init >= 0, ">= 0"),
                  ("latent_beta", self.latent_beta >= 0, ">= 0"),
                  ("latent_encoder_blocks", self.latent_encoder_blocks >= 1, ">= 1"),
                  ("latent_time_power", self.latent_time_power > 0, "> 0")]
        for name, ok, allowed in ranges:
            if not ok:
                raise DidiError(f"distill.{name} = {getattr(self, name)!r} is not allowed: it must be {allowed}")
        if self.reward_source not in ("discriminator", "teacher"):
            raise DidiError(f"distill: reward_source must be 'discriminator' or 'teacher', not {self.reward_source!r}")
        if self.kl_reference not in ("teacher", "init"):
            raise DidiError(f"distill: kl_reference must be 'teacher' or 'init', not {self.kl_reference!r}")
        if self.kl_reference != "teacher" and self.method != "didi-instruct":
            raise DidiError("distill: kl_reference is a DiDi-Instruct option")
        if self.noise_prior not in ("normal", "init"):
            raise DidiError(f"distill: noise_prior must be 'normal' or 'init', not {self.noise_prior!r}")
        if self.noise_prior != "normal" and self.method not in ("didi-instruct", "dmmd"):
            raise DidiError("distill: noise_prior is a DiDi-Instruct and D-MMD option")
        if self.noise_prior == "init" and not (self.student_init and self.student_noise_dim):
            raise DidiError("distill: noise_prior='init' needs student_init (--student-init: a latent student with a "
                            "saved prior, `didi prior`) and student_noise_dim > 0")
        if self.method == "latent":
            if not self.student_noise_dim:
                raise DidiError("distill: method 'latent' needs student_noise_dim > 0 (the latent's dimensions)")
            if self.student_init:
                raise DidiError("distill: student_init is a DiDi-Instruct option")
            if self.batch_size < 1 or self.max_steps < 1:
                raise DidiError("distill: batch_size and max_steps must be >= 1")
            return
        if self.method == "dmmd":
            self.dmmd.validate()
            if self.batch_size < 1 or self.max_steps < 1:
                raise DidiError("distill: batch_size and max_steps must be >= 1")
            if not 0.0 < self.t_end < 1.0:
                raise DidiError("distill: t_end must be in (0, 1)")
            return
        if self.method == "sdtt":
            from .methods.sdtt import round_schedule

            if self.student_init:
                raise DidiError("distill: student_init is a DiDi-Instruct option")
            if self.batch_size < 1:
                raise DidiError("distill: batch_size must be >= 1")
            round_schedule(self.sdtt_start_steps, self.sdtt_end_steps, self.max_steps)
            if self.student_noise_dim:
                raise DidiError("distill: student_noise_dim is a DiDi-Instruct option (SDTT matches per-token "
                                "marginals)")
            if self.sdtt_divergence not in ("reverse_kl", "kl"):
                raise DidiError(f"distill: sdtt_divergence must be 'reverse_kl' or 'kl', not {self.sdtt_divergence!r}")
            return
        if self.group < 1 or self.batch_size < 1 or self.max_steps < 1:
            raise DidiError("distill: group, batch_size and max_steps must be >= 1")
        if self.group == 1 and self.group_norm:
            raise DidiError("distill.group = 1: advantages are normalized within each group, so a group of one gives "
                            "a policy gradient of exactly zero; use group >= 2")
        if self.real not in ("data", "teacher"):
            raise DidiError(f"distill: real must be 'data' or 'teacher', not {self.real!r}")
        if self.final_fill not in ("sample", "argmax"):
            raise DidiError(f"distill: final_fill must be 'sample' or 'argmax', not {self.final_fill!r}")
        if self.score_decomposition and self.student_steps < 2:
            raise DidiError("distill: score decomposition needs student_steps >= 2")
        if self.path_credit not in ("togo", "step"):
            raise DidiError(f"distill: path_credit must be 'togo' or 'step', not {self.path_credit!r}")
        if self.group_noise not in ("independent", "shared"):
            raise DidiError(f"distill: group_noise must be 'independent' or 'shared', not {self.group_noise!r}")
        if self.group_noise == "shared" and not self.student_noise_dim:
            raise DidiError("distill: group_noise='shared' needs a student with a noise input (student_noise_dim > 0)")
        if self.reward_states not in ("final", "path"):
            raise DidiError(f"distill: reward_states must be 'final' or 'path', not {self.reward_states!r}")
        if self.rollout_grid not in ("tau", "sampler"):
            raise DidiError(f"distill: rollout_grid must be 'tau' or 'sampler', not {self.rollout_grid!r}")
        if not 0 < self.tau_min <= self.tau_max < 1:
            raise DidiError("distill: need 0 < tau_min <= tau_max < 1")


# Named starting points. "paper": the authors' settings, for the 169 M OpenWebText teacher.
# "tiny": a CPU-sized run of a few hundred steps (larger learning rates, short warm-up, a faster EMA so the
# saved EMA student has moved), for teachers of the `tiny` preset.
DISTILL_PRESETS: dict[str, dict] = {
    "paper": {},
    "tiny": dict(batch_size=8, group=4, student_lr=1e-4, disc_lr=1e-4, warmup_steps=20, disc_only_steps=20,
                 disc_trainable_blocks=2, ema=0.95, max_steps=400),
    # The reference-language recipe (teachers of preset lang-tiny): 4-step rollouts on the 4-step sampler's
    # grid and rewards on every rollout state (reward-to-go), a lower student lr. bench/results/reference.md measures
    # it against the paper's defaults (preset tiny).
    "lang": dict(batch_size=8, group=4, student_lr=3e-5, disc_lr=1e-4, warmup_steps=20, disc_only_steps=20,
                 disc_trainable_blocks=2, ema=0.95, max_steps=600, student_steps=4, rollout_grid="sampler",
                 reward_states="path"),
    # SDTT at the scale of its paper (7 rounds of 10k steps, 1024 -> 8 steps) and a CPU-sized version.
    # The learning rate stays constant after warm-up (min_lr_ratio=1): a decay spanning all rounds would starve
    # the last rounds, the ones that make the few-step student.
    "sdtt": dict(method="sdtt", max_steps=70_000, batch_size=128, student_lr=6e-5, warmup_steps=500, ema=0.9999,
                 min_lr_ratio=1.0),
    "sdtt-tiny": dict(method="sdtt", max_steps=700, batch_size=16, student_lr=1e-4, warmup_steps=20, ema=0.95,
                      min_lr_ratio=1.0),
    # SDTT for lang-tiny teachers: 5 rounds 128 -> 4 steps (the language's teacher needs 128 steps).
    "sdtt-lang": dict(method="sdtt", max_steps=5000, batch_size=16, student_lr=1e-4, warmup_steps=20, ema=0.95,
                      min_lr_ratio=1.0, sdtt_start_steps=128, sdtt_end_steps=4),
    # A latent-variable student for lang-tiny teachers (README, reference language): the teacher's batch, a
    # fine-tuning learning rate, a 16-dimensional latent, beta 0.01: a code that carries most of a text, to be
    # sampled from the exemplar prior of `didi prior RUN --components 0` (beta 0.03 was best with N(0, I) draws,
    # E19-E21, E37; with that prior three of four beta-0.01 students pass the bar of the reference log, E46-E47),
    # trained more where few tokens are visible (time power 2: E54-E55 on errands, E57 on stories) at twice the
    # first learning rate (6e-4: E58, E60 on errands, E61 on stories).
    "latent-lang": dict(method="latent", max_steps=3000, batch_size=64, student_lr=6e-4, warmup_steps=100, ema=0.99,
                        min_lr_ratio=0.1, student_clip=1.0, student_noise_dim=16, student_noise_init=0.1,
                        latent_beta=0.01, latent_encoder_blocks=2, latent_time_power=2.0),
    # The DiDi stage of the reference-language recipe (E48-E49): from a latent-lang student (--student-init) whose
    # prior `didi prior` fitted; rollouts draw their code from that prior, the reward is the teacher's evidence (no
    # discriminator, so no discriminator settings), the KL anchors the student to where it started. (Until
    # 2026-12-07 it also gave a group one shared code, group_noise=shared, measured to change nothing.)
    # Its run settings (PRESET_RUN_OVERRIDES): the power-3 grid, a snapshot every 50 iterations for bench/curve.py.
    "lang-stage": dict(batch_size=8, group=4, student_lr=3e-5, warmup_steps=20, ema=0.95, max_steps=300,
                       student_steps=4, rollout_grid="sampler", reward_states="path", reward_source="teacher",
                       student_noise_dim=16, noise_prior="init", kl_reference="init", kl_beta=15.0),
    # D-MMD: for lang-tiny teachers (4-step students, the batch of the teacher's training), for tiny and
    # test teachers, and at the paper's 169 M shape (16-step students; lrs as for moment matching at that scale).
    "dmmd-lang": dict(method="dmmd", max_steps=3000, batch_size=64, student_lr=5e-5, warmup_steps=50, ema=0.99,
                      min_lr_ratio=0.1, student_clip=1.0, dmmd=dict(steps=4, aux_lr=1e-4)),
    "dmmd-tiny": dict(method="dmmd", max_steps=400, batch_size=16, student_lr=1e-4, warmup_steps=20, ema=0.95,
                      student_clip=1.0, dmmd=dict(steps=8, aux_lr=1e-4)),
    "dmmd": dict(method="dmmd", max_steps=10_000, batch_size=128, student_lr=1e-5, warmup_steps=500, ema=0.999,
                 student_clip=1.0, dmmd=dict(steps=16, aux_lr=1e-5)),
}
# Run-config settings that belong to a preset (`section.key=value`, applied before the user's --set).
PRESET_RUN_OVERRIDES: dict[str, list[str]] = {
    "lang-stage": ["diffusion.grid_power=3", "train.snapshot_every=50"],
}


def default_preset(teacher: str | Path, method: str | None = None) -> str:
    """The distill preset for `method` (default didi-instruct) that fits the teacher run's own preset: the
    reference-language presets for lang-tiny teachers, the CPU-sized ones for tiny and test teachers, else the
    paper-sized ones."""
    teacher_preset = RunConfig.load(runs.check_run_dir(teacher) / runs.CONFIG).preset
    if teacher_preset == "lang-tiny":
        return {"sdtt": "sdtt-lang", "latent": "latent-lang", "dmmd": "dmmd-lang"}.get(method or "", "lang")
    small = teacher_preset in ("tiny", "test")
    if method in ("sdtt", "dmmd"):
        return f"{method}-tiny" if small else method
    if method == "latent":
        return "latent-lang"
    return "tiny" if small else "paper"


def distill_preset(name: str, overrides: list[str] | None = None) -> DistillConfig:
    """A DistillConfig from a named preset plus `key=value` overrides (keys of DistillConfig, with or
    without a `distill.` prefix). A preset's run settings, PRESET_RUN_OVERRIDES[name] (lang-stage's grid and
    snapshots), are not in it: `didi distill --preset` applies them; from Python pass them to `distill(overrides=)`."""
    if name not in DISTILL_PRESETS:
        raise DidiError(f"unknown distill preset '{name}' (choose from: {', '.join(DISTILL_PRESETS)})")
    dcfg = DistillConfig.from_dict(DISTILL_PRESETS[name])
    if overrides:
        holder = _Holder(distill=dcfg)
        apply_overrides(holder, [o if o.startswith("distill.") else "distill." + o for o in overrides])
    return dcfg


@dataclass
class _Holder:
    distill: DistillConfig


def _train_from_dcfg(cfg: RunConfig, dcfg: DistillConfig) -> None:
    """The run config's train section mirrors the distillation schedule (the student's optimizer)."""
    t = cfg.train
    t.max_steps, t.batch_size = dcfg.max_steps, dcfg.batch_size
    t.lr, t.betas, t.weight_decay = dcfg.student_lr, tuple(dcfg.student_betas), dcfg.student_weight_decay
    t.warmup_steps, t.min_lr_ratio = dcfg.warmup_steps, dcfg.min_lr_ratio
    t.grad_clip, t.ema = dcfg.student_clip, dcfg.ema


OWNED = ("train.max_steps", "train.batch_size", "train.lr", "train.betas", "train.weight_decay", "train.warmup_steps",
         "train.min_lr_ratio", "train.grad_clip", "train.ema")


def distill(teacher: str | Path | None, out: str | Path, dcfg: DistillConfig | None = None, *, data: str | None = None,
            overrides: list[str] | None = None, resume: bool = False, until_step: int | None = None,
            progress: bool = True) -> dict:
    """Distil the MDLM teacher run `teacher` into a few-step student in the run directory `out`.

    overrides: `section.key=value` for the run config (train.seed, train.device, train.log_every, ...);
    the schedule keys (train.max_steps, batch_size, lr, ...) belong to `dcfg`. data: a training source
    replacing the teacher's. With `resume=True` the run continues from `out/checkpoint.pt` exactly; the
    saved distill config is used (a `dcfg` that differs from it is an error) and `teacher` may be None
    (the saved teacher path is used). Returns the last metrics.
    """
    import torch.distributed as dist

    from .data import prepare_data
    from .tokenizers import Tokenizer
    from .trainer import PartSpec, Trainer, init_distributed, resolve_device

    out = Path(out)
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if key in OWNED:
            raise DidiError(f"override {item!r}: set this through the distill config (DistillConfig)")
        if key.startswith("model."):  # the student is a copy of the teacher: its weights fix the shape
            raise DidiError(f"override {item!r}: a student has its teacher's model; model.* settings cannot apply "
                            "to a distillation")
    if resume:
        runs.check_run_dir(out)
        if not runs.has_checkpoint(out):
            raise DidiError(f"cannot resume: {out} has no {runs.CHECKPOINT}")
        saved = fileio.read_json(out / runs.CONFIG)
        if "distill" not in saved:
            raise DidiError(f"{out} is not a distillation run (no 'distill' section in {runs.CONFIG})")
        saved_dcfg = DistillConfig.from_dict(saved["distill"])
        if dcfg is not None and dcfg != saved_dcfg:
            changed = [f.name for f in dataclasses.fields(DistillConfig)
                       if getattr(dcfg, f.name) != getattr(saved_dcfg, f.name)]
            raise DidiError(f"cannot resume with a different distill config (changed: {', '.join(changed)})")
        dcfg = saved_dcfg
        teacher = teacher if teacher is not None else saved["distill"].get("teacher")
        cfg = RunConfig.from_dict(saved)
        if overrides:
            apply_overrides(cfg, overrides)
    else:
        if teacher is None:
            raise DidiError("distill needs a teacher run directory")
        dcfg = dcfg or DistillConfig()
        if (out / runs.CONFIG).exists() or (out / runs.CHECKPOINT).exists():
            raise DidiError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        cfg = RunConfig.load(runs.check_run_dir(teacher) / runs.CONFIG)
        if overrides:
            apply_overrides(cfg, overrides)
        if data:
            cfg.data.source = data
        if dcfg.method == "dmmd" and dcfg.student_init and not dcfg.student_noise_dim:
            dcfg = _code_from_init(dcfg)
    dcfg.validate()
    if cfg.model.arch != "dit":
        raise DidiError(f"the teacher must be a masked diffusion model (model.arch dit), not {cfg.model.arch}")
    if not resume:
        if cfg.model.noise_dim:
            raise DidiError("the teacher has a noise input (model.noise_dim > 0): distil a teacher, not a student")
        cfg.model.noise_dim = dcfg.student_noise_dim  # the student run's model
    _train_from_dcfg(cfg, dcfg)
    cfg.validate()
    teacher = Path(teacher).resolve()
    if dcfg.student_init and not resume:  # saved as an absolute path, so the run can resume from anywhere
        dcfg = dataclasses.replace(dcfg, student_init=str(runs.check_run_dir(dcfg.student_init).resolve()))

    prior = _rollout_prior(dcfg, out, resume)  # before anything is written: a bad prior leaves no half-made run

    d = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, d)
    barrier = dist.barrier if d.world > 1 else (lambda: None)
    if not resume and d.main:
        out.mkdir(parents=True, exist_ok=True)
        if prior is not None:
            prior.save(out)  # the student samples from the prior it was trained on; a resume reads this copy
        shutil.copytree(teacher / runs.TOKENIZER_DIR, out / runs.TOKENIZER_DIR, dirs_exist_ok=True)
        from .protein import LENGTHS

        if (teacher / LENGTHS).is_file():  # protein runs: the length histogram sampling draws from
            shutil.copy2(teacher / LENGTHS, out / LENGTHS)
    barrier()
    tok = Tokenizer.load(out / runs.TOKENIZER_DIR)
    if tok.model_vocab_size != cfg.model.vocab_size:
        raise DidiError(f"tokenizer has {tok.model_vocab_size} ids, the teacher {cfg.model.vocab_size}")
    if d.main:
        data_ = prepare_data(cfg.data, tok, cfg.model.length, show_progress=progress)
    barrier()
    if not d.main:
        data_ = prepare_data(cfg.data, tok, cfg.model.length, show_progress=False)
    train_blocks, valid_blocks = data_

    teacher_model = runs.load_run(teacher, "cpu").model
    torch.manual_seed(cfg.train.seed)  # identical discriminator head on every rank
    student = copy.deepcopy(teacher_model)
    # on resume the checkpoint holds the student; the init is read again only when it is the KL reference
    init_weights = (_student_init_weights(dcfg.student_init, cfg, teacher)
                    if dcfg.student_init and (not resume or dcfg.kl_reference == "init") else None)
    init_has_noise = init_weights is not None and "noise_map.weight" in init_weights
    if init_weights is not None and not init_has_noise:
        student.load_state_dict(init_weights)
    if dcfg.student_noise_dim:
        student.add_noise_input(dcfg.student_noise_dim, dcfg.student_noise_init,
                                torch.Generator().manual_seed(cfg.train.seed))
    if init_has_noise:  # a latent student (method "latent"): its noise map comes with it
        student.load_state_dict(init_weights)
    kl_ref = copy.deepcopy(student) if dcfg.kl_reference == "init" else None  # frozen by DiDiInstruct
    student = student.train().requires_grad_(True)
    student_spec = PartSpec(student, lr=dcfg.student_lr, max_steps=dcfg.max_steps, warmup_steps=dcfg.warmup_steps,
                            min_lr_ratio=dcfg.min_lr_ratio, betas=tuple(dcfg.student_betas),
                            weight_decay=dcfg.student_weight_decay, grad_clip=dcfg.student_clip, ema=dcfg.ema,
                            decay="linear")
    from .diffusion import Kept

    keep = Kept.for_run(cfg.data, tok)  # protein BOS/EOS/PAD (the length is given), the first position of text rows
    setup = StudentSetup(cfg, dcfg, tok, keep, teacher, teacher_model, student, student_spec, kl_ref, prior, device,
                         d.rank, d.world)
    method, specs, banner = method_class(dcfg.method).build(setup)
    trainer = Trainer(cfg, out, method, specs, train_blocks, valid_blocks, d, device, progress=progress)
    if not resume and d.main:  # written last: a start that failed before this leaves nothing that blocks a retry
        if dcfg.method == "didi-instruct" and dcfg.reward_source == "discriminator":  # for guided sampling
            fileio.atomic_write_text(out / "discriminator.json", json.dumps(
                {"time_conditioning": dcfg.disc_time_conditioning, "trainable_blocks": dcfg.disc_trainable_blocks})
                + "\n")
        runs.save_data_counts(out, train_blocks)
        fileio.atomic_write_text(out / runs.CONFIG, json.dumps(
            {**cfg.to_dict(), "distill": {**asdict(dcfg), "teacher": str(teacher)}}, indent=2) + "\n")
    if d.main:
        print(banner)
    if resume:
        trainer.resume()
    return trainer.train(until_step=until_step)


def _rollout_prior(dcfg: DistillConfig, out: Path, resume: bool):
    """The NoisePrior DiDi rollouts draw xi from (noise_prior "init"): student_init's at the start, the run's own copy
    on resume (so a later `didi prior --overwrite` on the init cannot change a resumed run); None for N(0, I)."""
    if dcfg.noise_prior != "init":
        return None
    from .prior import FILE, load_prior

    where = out if resume else Path(dcfg.student_init)
    prior = load_prior(where)
    if prior is None:
        hint = "" if resume else f" (fit one with `didi prior {where}`)"
        raise DidiError(f"distill.noise_prior='init': {where} has no {FILE}{hint}")
    if prior.dim != dcfg.student_noise_dim:
        raise DidiError(f"distill.noise_prior='init': the prior in {where} has {prior.dim} dimensions, "
                        f"student_noise_dim is {dcfg.student_noise_dim}")
    return prior


def _code_from_init(dcfg: DistillConfig) -> DistillConfig:
    """D-MMD from a latent student: the student keeps its code input, drawn from the init's prior when it has one."""
    from .prior import FILE

    init = runs.check_run_dir(dcfg.student_init)
    dim = RunConfig.load(init / runs.CONFIG).model.noise_dim
    if not dim:
        return dcfg
    return dataclasses.replace(dcfg, student_noise_dim=dim, noise_prior="init" if (init / FILE).is_file() else "normal")


def _student_init_weights(path: str, cfg: RunConfig, teacher: Path) -> dict:
    """The sampling weights of run `path`, checked to fit the teacher's model and tokenizer."""
    init = runs.load_run(path, "cpu")
    # an init without a noise input (SDTT) gets the student's fresh one; a latent student's must be the student's
    mine, theirs = asdict(init.config.model), {**asdict(cfg.model), "noise_dim": 0}
    if init.config.model.noise_dim:
        theirs["noise_dim"] = cfg.model.noise_dim
    if mine != theirs:
        diff = [k for k in mine if mine[k] != theirs.get(k)]
        raise DidiError(f"distill.student_init {init.path}: its model differs from the teacher's ({', '.join(diff)})")
    tok = Path(runs.TOKENIZER_DIR, "tokenizer.json")
    if (init.path / tok).read_bytes() != (teacher / tok).read_bytes():
        raise DidiError(f"distill.student_init {init.path}: its tokenizer is not the teacher's")
    return init.model.state_dict()


def load_distill_config(run_dir: str | Path) -> DistillConfig | None:
    """The distill section of a run's config.json (None for a run that is not a distillation run)."""
    saved = fileio.read_json(runs.check_run_dir(run_dir) / runs.CONFIG)
    return DistillConfig.from_dict(saved["distill"]) if "distill" in saved else None
