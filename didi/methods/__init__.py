"""Training methods: small objects the trainer calls (`step(batch, generator, ctx)`), one per algorithm, in one
registry.

TEACHERS: `model.arch` -> the method that trains a run from data (`didi train`): MDLM for the diffusion model, next-
token prediction for the AR baseline. STUDENTS: `distill.method` -> the method that trains a student from a teacher
run (`didi distill`). A student method's `build(setup)` makes the method and the parts it trains from what
`distill.distill` prepared (`StudentSetup`) and says in one line what it does.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..errors import DidiError

TEACHERS = {"dit": "mdlm:MDLM", "ar": "ar:AR"}
STUDENTS = {"didi-instruct": "didi_instruct:DiDiInstruct", "sdtt": "sdtt:SDTT", "dmmd": "dmmd:DMMD",
            "latent": "latent:LatentMDLM"}


def method_class(name: str, registry: dict[str, str] | None = None):
    """The class registered as `name` (a student method, or with registry=TEACHERS a model.arch)."""
    registry = STUDENTS if registry is None else registry
    if name not in registry:
        raise DidiError(f"no method {name!r} (choose from: {', '.join(registry)})")
    module, cls = registry[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def make_method(cfg: RunConfig, tokenizer):
    """The teacher's (or AR baseline's) training method for a run config."""
    if cfg.model.arch not in TEACHERS:
        raise DidiError(f"no training method for model.arch '{cfg.model.arch}'")
    cls = method_class(cfg.model.arch, TEACHERS)
    if cfg.model.arch == "ar":
        return cls(cfg, tokenizer)
    from ..diffusion import Kept

    return cls(cfg, tokenizer.mask_id, Kept.for_run(cfg.data, tokenizer))


@dataclass
class StudentSetup:
    """What every student method starts from: the run and distill configs, the tokenizer and kept positions, the
    teacher (its path and a CPU copy of its network), the student network (the teacher's copy, a student_init's
    weights and noise input loaded) with its optimizer spec, the frozen KL reference and rollout prior when the
    config asks for them, and the device and DDP facts."""

    cfg: RunConfig
    dcfg: object  # distill.DistillConfig
    tok: object
    keep: object  # diffusion.Kept
    teacher: Path
    teacher_model: object
    student: object
    student_spec: object  # trainer.PartSpec
    kl_ref: object | None
    prior: object | None
    device: str
    rank: int
    world: int

    @property
    def n_student(self) -> float:
        return sum(p.numel() for p in self.student.parameters()) / 1e6

    def frozen_teacher(self):
        return self.teacher_model.to(self.device).eval().requires_grad_(False)

    def part(self, module, lr: float, *, steps_per_iteration: int = 1, **kw):
        """A PartSpec trained like the student (its betas, decay, clip, linear schedule; no EMA) at its own lr."""
        from ..trainer import PartSpec

        d = self.dcfg
        base = dict(max_steps=d.max_steps * steps_per_iteration, warmup_steps=d.warmup_steps * steps_per_iteration,
                    min_lr_ratio=d.min_lr_ratio, betas=tuple(d.student_betas), weight_decay=d.student_weight_decay,
                    grad_clip=d.student_clip, ema=0.0, decay="linear")
        return PartSpec(module, lr=lr, **{**base, **kw})

    def where(self) -> str:
        return f"batch {self.dcfg.batch_size}, device {self.device}, {self.world} process(es)"
