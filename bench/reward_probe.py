"""How good is a distilled student's discriminator as a reward? On the reference language the exact validity of each
student text is known, so the reward can be checked against it.

For a DiDi-Instruct run (student + discriminator.safetensors): roll the student out as distillation does (its
`student_steps` on the sampler's grid), and score every rollout state with the discriminator the way
`reward_states=path` does (mean clipped logit over positions, against real rows masked to the same time). Reports,
per rollout state: the discriminator's accuracy (real logit > 0, student logit < 0, per position) and mean logits;
and, per rollout: the correlation between each reward (the final state's, the reward-to-go of the first step) and
the share of valid sentences of the final text (Pearson and Spearman), with the mean reward of rollouts whose text
is fully valid against the others.

Usage: python bench/reward_probe.py RUN [RUN ...] --grammar stories [--num 512] [--name reward_probe]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import write_results

from didi import runs
from didi.data import prepare_data
from didi.diffusion import Kept, LogLinearSchedule, mask_tokens
from didi.distill import load_distill_config
from didi.interop import load_discriminator
from didi.language import Grammar, Parser
from didi.methods.didi_instruct import DiDiInstruct

COLUMNS = ["run", "what", "state", "t", "disc_acc_real", "disc_acc_student", "logit_real", "logit_student",
           "pearson", "spearman", "reward_valid", "reward_invalid", "valid_share"]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort().astype(float), b.argsort().argsort().astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def probe(run_dir: str, grammar: Grammar, num: int, seed: int) -> list[dict]:
    run = runs.load_run(run_dir, "cpu")
    dcfg = load_distill_config(run_dir)
    disc = load_discriminator(run_dir)
    cfg, tok = run.config, run.tokenizer
    method = DiDiInstruct(cfg, dcfg, tok.mask_id, run.model, Kept.for_run(cfg.data, tok))
    student = run.model.eval()
    L, mask = cfg.model.length, tok.mask_id
    _, valid = prepare_data(cfg.data, tok, L, show_progress=False)
    real = valid.get(list(range(min(num, len(valid)))))
    n = real.shape[0]
    gen = torch.Generator().manual_seed(seed)
    grid = method.times(torch.zeros(n))
    init = torch.where(method.kept(real), real, torch.full_like(real, mask)) if method.kept else None
    noise = torch.randn(n, cfg.model.noise_dim, generator=gen) if cfg.model.noise_dim else None
    with torch.no_grad():
        x_hat, states, _, _ = method.rollout(student, n, L, grid, gen, "cpu", init, noise is None, noise)
        post = torch.stack(states[1:] + [x_hat])  # [k, n, L]
        t_post = grid[:, 1:].clone()
        t_post[:, -1] = 0.0
        sched = LogLinearSchedule(cfg.diffusion.eps)
        rows, rewards = [], []
        for s in range(post.shape[0]):
            t = t_post[:, s]
            noise_real = torch.rand(real.shape, generator=gen).masked_fill(method.kept(real), 0)
            z_real = mask_tokens(real, sched.alpha(t), mask, noise_real)
            lr = disc(z_real, sched.sigma(t)).float().clamp(-dcfg.reward_clip, dcfg.reward_clip)
            lf = disc(post[s], sched.sigma(t)).float().clamp(-dcfg.reward_clip, dcfg.reward_clip)
            rewards.append(lf.mean(1))
            rows.append({"what": "state", "state": s + 1, "t": float(t[0]),
                         "disc_acc_real": float((lr > 0).float().mean()),
                         "disc_acc_student": float((lf < 0).float().mean()),
                         "logit_real": float(lr.mean()), "logit_student": float(lf.mean())})
    parser = Parser(grammar)
    eos = tok.eos_id
    share = []
    for row in x_hat.tolist():
        ids = row[1:]
        ids = ids[:ids.index(eos)] if eos in ids else ids
        sentences = parser.sentences(tok.decode(ids))
        share.append(sum(sp is not None for _, sp in sentences) / max(len(sentences), 1))
    share = np.array(share)
    r = torch.stack(rewards, 1).numpy()  # [n, k]
    for what, rew in (("final-state reward", r[:, -1]), ("first step's reward-to-go", r.sum(1))):
        full = share == 1.0
        rows.append({"what": what, "pearson": float(np.corrcoef(rew, share)[0, 1]), "spearman": spearman(rew, share),
                     "reward_valid": float(rew[full].mean()) if full.any() else float("nan"),
                     "reward_invalid": float(rew[~full].mean()) if (~full).any() else float("nan"),
                     "valid_share": float(share.mean())})
    return [{"run": str(run_dir), **row} for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--grammar", default="stories")
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="reward_probe")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    grammar = Grammar.load(args.grammar)
    rows = [row for run in args.runs for row in probe(run, grammar, args.num, args.seed)]
    note = (f"{args.num} rollouts of each run's final student (the EMA weights), its saved discriminator; held-out "
            "rows as the real side. State s is the rollout's state after step s (the last one x̂0, judged against "
            "unmasked rows). Correlations are over rollouts, with the share of valid sentences of x̂0.")
    kw = {"out_dir": args.out} if args.out else {}
    path = write_results(args.name, rows, vars(args), COLUMNS, note, **kw)
    print(path.read_text())


if __name__ == "__main__":
    main()
