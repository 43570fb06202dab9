"""The few-step recipe as one call: `didi recipe --teacher RUN --out DIR` / `didi.recipe.run_recipe`.

Stages, each a run directory under `out` and each resumable (a stopped recipe rerun with the same arguments goes on
where it stopped; a finished stage is marked by `out/STAGE.done` and never trained again):

  latent  a latent-variable student from the teacher (`--method latent`, preset latent-lang): the teacher's weights
          fine-tuned on the teacher's corpus as the decoder of a VAE with a 16-dimensional code
  prior   its exemplar prior (`didi prior latent --components 0`): the codes of 8,192 training texts, which sampling
          draws from
  stage   optional: a last distillation stage from the latent student, "dmmd" (preset dmmd-lang) or "didi" (preset
          lang-stage), into out/dmmd or out/didi

The student to sample is `out/latent` (or the stage's run). On the reference languages the latent stage does the
work: the comparison in docs/results.md measures every stage. It is a student trained on the corpus, not a pure
distillation of the teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import runs
from .errors import DidiError

STAGES = ("none", "dmmd", "didi")


def _train_stage(out: Path, name: str, teacher: Path, preset: str, init: Path | None, data: str | None,
                 overrides: list[str], steps: int | None, progress: bool, distill_overrides: list[str] = ()) -> Path:
    from .distill import PRESET_RUN_OVERRIDES, distill, distill_preset

    run, done = out / name, out / f"{name}.done"
    if done.is_file():
        if progress:
            print(f"didi recipe: {name}: finished earlier ({run})")
        return run
    resume = runs.has_checkpoint(run)
    if run.exists() and any(run.iterdir()) and not resume:
        raise DidiError(f"{run} holds files but no checkpoint to resume; delete it to train the {name} stage again")
    d_over = ([f"student_init={init}"] if init else []) + ([f"max_steps={steps}"] if steps else [])
    d_over += list(distill_overrides)
    dcfg = None if resume else distill_preset(preset, d_over)
    if progress:
        print(f"didi recipe: {name}: {'resuming' if resume else 'training'} ({preset}) in {run}")
    result = distill(None if resume else teacher, run, dcfg, data=None if resume else data,
                     overrides=PRESET_RUN_OVERRIDES.get(preset, []) + overrides, resume=resume, progress=progress)
    done.write_text(json.dumps({"preset": preset, "last": result}, default=str) + "\n")
    return run


def run_recipe(teacher: str | Path, out: str | Path, *, stage: str = "none", data: str | None = None,
               minutes: float | None = None, stage_minutes: float | None = None, latent_steps: int | None = None,
               stage_steps: int | None = None, overrides: list[str] | None = None,
               latent_overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Run (or resume) the recipe from the MDLM teacher run `teacher` into `out`; returns the run to sample.

    minutes / stage_minutes cap each stage's wall-clock (`train.max_minutes`); latent_steps / stage_steps replace the
    presets' iteration counts; overrides are run settings (`train.seed=1`, `train.cpu_bf16=true`, ...) for every
    stage; latent_overrides are DistillConfig settings of the latent stage (`warmup_steps=40`, `latent.beta=0.001`)."""
    from .prior import load_prior, write_prior

    if stage not in STAGES:
        raise DidiError(f"recipe stage must be one of {', '.join(STAGES)}, not {stage!r}")
    teacher, out = Path(teacher), Path(out)
    runs.check_run_dir(teacher)
    out.mkdir(parents=True, exist_ok=True)
    over = list(overrides or [])
    latent = _train_stage(out, "latent", teacher, "latent-lang", None, data,
                          over + ([f"train.max_minutes={minutes}"] if minutes else []), latent_steps, progress,
                          latent_overrides or [])
    if load_prior(latent) is None:
        write_prior(latent, 0)
        if progress:
            print(f"didi recipe: prior: the exemplar prior of {latent} written (noise_prior.safetensors)")
    if stage == "none":
        return latent
    preset = {"dmmd": "dmmd-lang", "didi": "lang-stage"}[stage]
    return _train_stage(out, stage, teacher, preset, latent, data,
                        over + ([f"train.max_minutes={stage_minutes}"] if stage_minutes else []), stage_steps,
                        progress)
