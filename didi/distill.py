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
from .config import RunConfig, apply_overrides, check_fields, typed_from_dict
from .errors import DidiError
from .methods import STUDENTS, StudentSetup, method_class
from .methods.didi_instruct import DiDiInstructConfig
from .methods.dmmd import DMMDConfig
from .methods.latent import LatentConfig
from .methods.sdtt import SDTTConfig

DISCRIMINATOR = "discriminator.safetensors"
METHODS = tuple(STUDENTS)  # distill methods, registered in `didi.methods` beside the teachers' (`make_method`)


@dataclass
class DistillConfig:
    """A distillation run: the settings every method shares (the run's length and batch, the student's optimizer and
    schedule, where it starts, its code input) and one section per method (`distill.<section>.KEY`); only the
    section of `method` may differ from its defaults. Defaults follow DiDi-Instruct's authors unless noted."""

    method: str = "didi-instruct"  # or "sdtt", "dmmd" (D-MMD), or "latent" (a latent-variable student)
    max_steps: int = 10_000
    batch_size: int = 32  # real sequences per step (global)
    t_end: float = 1e-3  # the last time of a student's step grid (DiDi-Instruct, D-MMD)
    # student optimizer (lr about 1e-6 to 5e-6 at 169 M; 1e-5 for the tiny CPU scale)
    student_lr: float = 1e-5
    student_betas: tuple[float, float] = (0.9, 0.999)
    student_weight_decay: float = 0.0
    student_clip: float = 0.5
    ema: float = 0.999
    # both schedules: linear warm-up, then linear decay to min_lr_ratio
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    # where the student starts: "" = a copy of the teacher (paper); or a run directory of the same model shape and
    # tokenizer (an SDTT or a latent student, say) whose sampling weights start it (DiDi-Instruct, D-MMD). The
    # teacher stays the discriminator's backbone either way, and the KL reference unless didi.kl_reference says so
    student_init: str = ""  # "" (a copy of the teacher) or a run directory to start from
    didi: DiDiInstructConfig = field(default_factory=DiDiInstructConfig)  # method "didi-instruct"
    sdtt: SDTTConfig = field(default_factory=SDTTConfig)  # method "sdtt"
    latent: LatentConfig = field(default_factory=LatentConfig)  # method "latent"
    dmmd: DMMDConfig = field(default_factory=DMMDConfig)  # method "dmmd"

    # ---- beyond the paper (experimental; 0 / "normal" = the paper's student) ----
    # the student's code input: a per-sequence Gaussian input of this many dimensions (`DIT.add_noise_input`), fixed
    # over a rollout, so tokens revealed in the same step can agree through it; a fresh map starts at random with scale
    # student_noise_init. Method "latent" trains it on the corpus (the recipe); D-MMD from a latent student keeps it
    student_noise_dim: int = 0  # the code's dimensions (0: none)
    student_noise_init: float = 0.1  # the scale of a fresh code map
    # where the code is drawn from (DiDi-Instruct, D-MMD): "normal" (N(0, I)) or "init" (the prior `didi prior` saved
    # beside student_init; the run keeps a copy, so sampling it draws from the same prior)
    noise_prior: str = "normal"  # "normal" or "init" (student_init's saved prior)

    def __post_init__(self):  # a section given as a dict: DistillConfig(method="sdtt", sdtt=dict(start_steps=16))
        for name in SECTIONS.values():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, typed_from_dict(_SECTION_TYPES[name], value, f"distill.{name}."))

    @property
    def section(self):
        """The settings of this run's method."""
        return getattr(self, SECTIONS[self.method])

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        """From a preset or a run's saved `distill` section (types checked, unknown keys refused; `teacher`, which a
        run saves beside the fields, is ignored). A section saved flat, as runs made before 2026-12-07 did
        (`kl_beta`, `sdtt_start_steps`, `latent_beta`, ...), is read into its section."""
        return typed_from_dict(cls, _sectioned(d) if isinstance(d, dict) else d, "distill.", extra=("teacher",))

    def validate(self) -> None:
        if self.method not in METHODS:
            raise DidiError(f"distill: method must be one of {', '.join(METHODS)}, not {self.method!r}")
        ranges = [("max_steps", self.max_steps >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("student_lr", self.student_lr > 0, "> 0"), ("ema", 0.0 <= self.ema < 1.0, "in [0, 1)"),
                  ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                  ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "in [0, 1]"),
                  ("student_clip", self.student_clip >= 0, ">= 0"), ("t_end", 0.0 < self.t_end < 1.0, "in (0, 1)"),
                  ("student_noise_dim", self.student_noise_dim >= 0, ">= 0"),
                  ("student_noise_init", self.student_noise_init >= 0, ">= 0")]
        check_fields(self, "distill.", ranges, choices=[("noise_prior", ("normal", "init"))])
        for method, name in SECTIONS.items():  # a setting of another method's section would be silently unused
            if method != self.method and getattr(self, name) != _SECTION_TYPES[name]():
                changed = [f.name for f in dataclasses.fields(getattr(self, name))
                           if getattr(getattr(self, name), f.name) != f.default]
                raise DidiError(f"distill.{name}.{changed[0]}: a setting of method {method!r}, which this run "
                                f"(method {self.method!r}) does not use")
        if self.noise_prior != "normal" and self.method not in ("didi-instruct", "dmmd"):
            raise DidiError("distill.noise_prior is a DiDi-Instruct and D-MMD option")
        if self.noise_prior == "init" and not (self.student_init and self.student_noise_dim):
            raise DidiError("distill: noise_prior='init' needs student_init (--student-init: a latent student with a "
                            "saved prior, `didi prior`) and student_noise_dim > 0")
        self.section.validate(self)


SECTIONS = {"didi-instruct": "didi", "sdtt": "sdtt", "latent": "latent", "dmmd": "dmmd"}  # method -> its section
_SECTION_TYPES = {"didi": DiDiInstructConfig, "sdtt": SDTTConfig, "latent": LatentConfig, "dmmd": DMMDConfig}
# keys that runs made before 2026-12-07 saved flat, with their section and name there
_FLAT = {**{f.name: ("didi", f.name) for f in dataclasses.fields(DiDiInstructConfig)},
         **{f"sdtt_{f.name}": ("sdtt", f.name) for f in dataclasses.fields(SDTTConfig)},
         **{f"latent_{f.name}": ("latent", f.name) for f in dataclasses.fields(LatentConfig)}}


def _sectioned(d: dict) -> dict:
    """A saved distill dict with its flat method keys moved into their sections; the keys of the other methods, which
    such a run saved but never read, are dropped."""
    if not set(d) & set(_FLAT):
        return d
    own = SECTIONS.get(d.get("method", "didi-instruct"))
    out = {k: v for k, v in d.items() if k not in _FLAT}
    for key in set(d) & set(_FLAT):
        section, name = _FLAT[key]
        if section == own:
            out[section] = {**out.get(section, {}), name: d[key]}
    return out


def moved_key(key: str) -> str | None:
    """The new name of a distill option given by its flat name from before the sections (`kl_beta` ->
    `didi.kl_beta`), or None."""
    key = key.removeprefix("distill.")
    return ".".join(_FLAT[key]) if key in _FLAT else None


# Named starting points. "paper": the authors' settings, for the 169 M OpenWebText teacher.
# "tiny": a CPU-sized run of a few hundred steps (larger learning rates, short warm-up, a faster EMA so the
# saved EMA student has moved), for teachers of the `tiny` preset.
DISTILL_PRESETS: dict[str, dict] = {
    "paper": {},
    "tiny": dict(batch_size=8, student_lr=1e-4, warmup_steps=20, ema=0.95, max_steps=400,
                 didi=dict(group=4, disc_lr=1e-4, disc_only_steps=20, disc_trainable_blocks=2)),
    # The reference-language recipe (teachers of preset lang-tiny): 4-step rollouts on the 4-step sampler's
    # grid and rewards on every rollout state (reward-to-go), a lower student lr. bench/results/reference.md measures
    # it against the paper's defaults (preset tiny).
    "lang": dict(batch_size=8, student_lr=3e-5, warmup_steps=20, ema=0.95, max_steps=600,
                 didi=dict(group=4, disc_lr=1e-4, disc_only_steps=20, disc_trainable_blocks=2, student_steps=4,
                           rollout_grid="sampler", reward_states="path")),
    # SDTT at the scale of its paper (7 rounds of 10k steps, 1024 -> 8 steps) and a CPU-sized version.
    # The learning rate stays constant after warm-up (min_lr_ratio=1): a decay spanning all rounds would starve
    # the last rounds, the ones that make the few-step student.
    "sdtt": dict(method="sdtt", max_steps=70_000, batch_size=128, student_lr=6e-5, warmup_steps=500, ema=0.9999,
                 min_lr_ratio=1.0),
    "sdtt-tiny": dict(method="sdtt", max_steps=700, batch_size=16, student_lr=1e-4, warmup_steps=20, ema=0.95,
                      min_lr_ratio=1.0),
    # SDTT for lang-tiny teachers: 5 rounds 128 -> 4 steps (the language's teacher needs 128 steps).
    "sdtt-lang": dict(method="sdtt", max_steps=5000, batch_size=16, student_lr=1e-4, warmup_steps=20, ema=0.95,
                      min_lr_ratio=1.0, sdtt=dict(start_steps=128, end_steps=4)),
    # A latent-variable student for lang-tiny teachers (README, reference language): the teacher's batch, a
    # fine-tuning learning rate, a 16-dimensional latent, beta 0.01: a code that carries most of a text, to be
    # sampled from the exemplar prior of `didi prior RUN --components 0` (beta 0.03 was best with N(0, I) draws,
    # E19-E21, E37; with that prior three of four beta-0.01 students pass the bar of the reference log, E46-E47),
    # trained more where few tokens are visible (time power 2: E54-E55 on errands, E57 on stories) at twice the
    # first learning rate (6e-4: E58, E60 on errands, E61 on stories).
    "latent-lang": dict(method="latent", max_steps=3000, batch_size=64, student_lr=6e-4, warmup_steps=100, ema=0.99,
                        min_lr_ratio=0.1, student_clip=1.0, student_noise_dim=16, student_noise_init=0.1,
                        latent=dict(beta=0.01, encoder_blocks=2, time_power=2.0)),
    # The DiDi stage of the reference-language recipe (E48-E49): from a latent-lang student (--student-init) whose
    # prior `didi prior` fitted; rollouts draw their code from that prior, the reward is the teacher's evidence (no
    # discriminator, so no discriminator settings), the KL anchors the student to where it started.
    # Its run settings (PRESET_RUN_OVERRIDES): the power-3 grid, a snapshot every 50 iterations for bench/curve.py.
    "lang-stage": dict(batch_size=8, student_lr=3e-5, warmup_steps=20, ema=0.95, max_steps=300, student_noise_dim=16,
                       noise_prior="init",
                       didi=dict(group=4, student_steps=4, rollout_grid="sampler", reward_states="path",
                                 reward_source="teacher", kl_reference="init", kl_beta=15.0)),
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
    return apply_distill_overrides(DistillConfig.from_dict(DISTILL_PRESETS[name]), overrides or [])


@dataclass
class _Holder:
    distill: DistillConfig


def apply_distill_overrides(dcfg: DistillConfig, overrides: list[str]) -> DistillConfig:
    """Apply `key=value` overrides (keys of DistillConfig, `didi.kl_beta` in a section, with or without a `distill.`
    prefix) in place; a flat key from before the sections is refused, naming its new place."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if new := moved_key(key):
            raise DidiError(f"override {item!r}: distill.{key.removeprefix('distill.')} is now distill.{new}")
    apply_overrides(_Holder(distill=dcfg), [o if o.startswith("distill.") else "distill." + o for o in overrides])
    return dcfg


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
            mine, saved_ = _flat_items(asdict(dcfg)), _flat_items(asdict(saved_dcfg))
            changed = [k for k in mine if mine[k] != saved_.get(k)]
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
    with runs.removed_if_start_fails(out, enabled=d.main and not resume):  # a failed start leaves nothing
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
        kl_init = dcfg.method == "didi-instruct" and dcfg.didi.kl_reference == "init"
        init_weights = (_student_init_weights(dcfg.student_init, cfg, teacher)
                        if dcfg.student_init and (not resume or kl_init) else None)
        init_has_noise = init_weights is not None and "noise_map.weight" in init_weights
        if init_weights is not None and not init_has_noise:
            student.load_state_dict(init_weights)
        if dcfg.student_noise_dim:
            student.add_noise_input(dcfg.student_noise_dim, dcfg.student_noise_init,
                                    torch.Generator().manual_seed(cfg.train.seed))
        if init_has_noise:  # a latent student (method "latent"): its noise map comes with it
            student.load_state_dict(init_weights)
        kl_ref = copy.deepcopy(student) if kl_init else None  # frozen by DiDiInstruct
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
            if dcfg.method == "didi-instruct" and dcfg.didi.reward_source == "discriminator":  # for guided sampling
                fileio.atomic_write_text(out / "discriminator.json", json.dumps(
                    {"time_conditioning": dcfg.didi.disc_time_conditioning,
                     "trainable_blocks": dcfg.didi.disc_trainable_blocks})
                    + "\n")
            runs.save_data_counts(out, train_blocks)
            fileio.atomic_write_text(out / runs.CONFIG, json.dumps(
                {**cfg.to_dict(), "distill": {**asdict(dcfg), "teacher": str(teacher)}}, indent=2) + "\n")
    if d.main:
        print(banner)
    if resume:
        trainer.resume()
    return trainer.train(until_step=until_step)


def _flat_items(d: dict, prefix: str = "") -> dict:
    """{"didi": {"kl_beta": 1}} -> {"didi.kl_beta": 1}."""
    out = {}
    for k, v in d.items():
        out.update(_flat_items(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


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
