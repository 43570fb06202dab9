"""Diagnostic: the teacher's NELBO per token on held-out data vs on samples (teacher at 2/8/128 steps, a
student at 8). The gap between data and few-step samples is the signal a discriminator can learn.

Usage: python bench/teacher_nelbo_probe.py --teacher runs/en-teacher [--student runs/en-student] [--num 64]
"""

from __future__ import annotations

import argparse

import torch

from didi import runs
from didi.data import prepare_data
from didi.diffusion import LogLinearSchedule, nelbo_terms, sample_times
from didi.sampling import ancestral_sample


@torch.no_grad()
def nelbo_per_row(model, x: torch.Tensor, sched: LogLinearSchedule, mask: int, eps: float, repeats: int = 4,
                  seed: int = 0) -> torch.Tensor:
    """The model's NELBO per token of each row of x [B, L], averaged over `repeats` noise draws -> float64 [B]."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(repeats):
        t = sample_times(x.shape[0], eps, True, g)
        noise = torch.rand(x.shape, generator=g)
        out += nelbo_terms(model, x, t, noise, sched, mask).double().mean(1)
    return out / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student")
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=4, help="noise draws averaged per set")
    args = ap.parse_args()
    run = runs.load_run(args.teacher, "cpu")
    teacher, mask, L = run.model.eval(), run.tokenizer.mask_id, run.config.model.length
    _, valid = prepare_data(run.config.data, run.tokenizer, L, show_progress=False)
    sets = {"held-out data": valid.get(torch.arange(min(args.num, len(valid))))}
    models = {"teacher": (teacher, (2, 8, 128))}
    if args.student:
        models["student"] = (runs.load_run(args.student, "cpu").model.eval(), (8,))
    sched = LogLinearSchedule(run.config.diffusion.eps)
    with torch.no_grad():
        for name, (model, step_counts) in models.items():
            for steps in step_counts:
                sets[f"{name} {steps}-step samples"] = ancestral_sample(
                    lambda z, s, m=model: m(z, s), args.num, L, steps, mask,
                    generator=torch.Generator().manual_seed(0)).tokens
        for name, x in sets.items():
            per_row = nelbo_per_row(teacher, x, sched, mask, run.config.diffusion.eps, args.repeats)
            print(f"teacher NELBO per token on {name}: {float(per_row.mean()):.3f}", flush=True)


if __name__ == "__main__":
    main()
