"""How much a noise-input student (`distill.student_noise_dim`) reads its noise: along its own k-step rollouts, the
mutual information between the noise and each masked position's token, per rollout step.

At a rollout state z, with M fresh noise draws xi_m, I(xi; x_i | z) is estimated by mean_m KL(p(x_i | z, xi_m) ||
p_bar(x_i | z)), p_bar the mean of the M outputs (a lower bound for finite M that tightens as M grows). 0 means the
student ignores its noise there; a student that coordinates the tokens revealed in one step through the noise has
it well above 0 at the states where many tokens are revealed at once. Reported per step as the mean over masked
positions (nats), beside the mean entropy of p_bar (what the position could still be).

Usage:
  python bench/noise_use.py runs/x/noise --steps 4 --num 128 --draws 8 [--every 2] [--name noise_use_noise]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from common import RESULTS, write_results
from curve import snapshots

from didi import fileio, runs
from didi.api import Pipeline
from didi.diffusion import LogLinearSchedule, masked_log_probs
from didi.distill import load_distill_config
from didi.methods.didi_instruct import DiDiInstruct
from didi.sampling import time_grid

COLUMNS = ["iteration", "step", "t", "masked_share", "noise_mi", "mean_entropy"]


@torch.no_grad()
def noise_use(model, cfg, dcfg, mask_id: int, clamp: torch.Tensor | None, steps: int, num: int, draws: int,
              seed: int) -> list[dict]:
    """clamp: the sampler's clamped ids [num, L] (-1 where free; text rows clamp their anchor EOS), or None."""
    gen = torch.Generator().manual_seed(seed)
    L, dim = cfg.model.length, cfg.model.noise_dim
    method = DiDiInstruct(cfg, dcfg, mask_id, model)
    grid = time_grid(steps, dcfg.t_end, cfg.diffusion.grid_power).float().expand(num, -1).clone()
    init = torch.full((num, L), mask_id, dtype=torch.long)
    if clamp is not None:
        init = torch.where(clamp >= 0, clamp, init)
    noise = torch.randn(num, dim, generator=gen)
    _, states, _, _ = method.rollout(model, num, L, grid, gen, "cpu", init, False, noise)
    sched = LogLinearSchedule(cfg.diffusion.eps)
    out = []
    for j, z in enumerate(states):
        m = z == mask_id
        sig = sched.sigma(grid[:, j])
        probs = torch.stack([masked_log_probs(model(z, sig, torch.randn(num, dim, generator=gen)).float()[m],
                                              mask_id).exp() for _ in range(draws)])  # [M, n_masked, V+1]
        p_bar = probs.mean(0)
        log_bar = p_bar.clamp_min(1e-30).log()
        kl = (probs * (probs.clamp_min(1e-30).log() - log_bar)).sum(-1).mean(0)  # [n_masked]
        ent = -(p_bar * log_bar).sum(-1)
        out.append({"step": j + 1, "t": float(grid[0, j]), "masked_share": float(m.float().mean()),
                    "noise_mi": float(kl.mean()) if kl.numel() else math.nan,
                    "mean_entropy": float(ent.mean()) if ent.numel() else math.nan})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--num", type=int, default=128)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=1, help="use every k-th snapshot (the final weights always)")
    ap.add_argument("--name")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    run_dir = Path(args.run)
    points = snapshots(run_dir)[:: args.every]
    done = (run_dir / runs.WEIGHTS).is_file()  # a run still training has its snapshots only
    if not done and not points:
        raise SystemExit(f"{run_dir} has neither weights nor snapshots yet")
    run = runs.load_run(run_dir, "cpu", weights=runs.WEIGHTS if done else str(points[0][1].relative_to(run_dir)))
    cfg, dcfg = run.config, load_distill_config(run_dir)
    if not cfg.model.noise_dim:
        raise SystemExit(f"{run_dir} has no noise input (model.noise_dim = 0)")
    mask_id, clamp = run.tokenizer.mask_id, Pipeline(run).clamp_from_text(args.num, None, None)
    plan = [(0, None)] + [(it, p) for it, p in points] + ([("final", run_dir / runs.WEIGHTS)] if done else [])
    rows = []
    for it, path in plan:
        if path is None:  # iteration 0: the teacher with the noise map the distillation started from
            teacher = fileio.read_json(run_dir / runs.CONFIG)["distill"]["teacher"]
            start = runs.load_run(teacher, "cpu").model
            start.add_noise_input(dcfg.student_noise_dim, dcfg.student_noise_init,
                                  torch.Generator().manual_seed(cfg.train.seed))
            weights = start.state_dict()
        else:
            weights = fileio.load_weights(path)
        run.model.load_state_dict(weights, strict=False)
        run.model.eval()
        for r in noise_use(run.model, cfg, dcfg, mask_id, clamp, args.steps, args.num, args.draws, args.seed):
            rows.append({"iteration": it, **r})
            print(rows[-1], flush=True)
    note = (f"Along {args.num} rollouts of {args.steps} steps (grid power {cfg.diffusion.grid_power:g}), at each "
            f"step's input state: noise_mi = mean over masked positions of mean_m KL(p(. | z, xi_m) || p_bar), "
            f"{args.draws} noise draws (nats); mean_entropy = the entropy of p_bar.")
    path = write_results(args.name or f"noise_use_{run_dir.name}", rows, vars(args), COLUMNS, note,
                         out_dir=Path(args.out))
    print(path.read_text())


if __name__ == "__main__":
    main()
