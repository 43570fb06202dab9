"""Diagnostic: how well does the teacher's own NELBO of a student text track the text's exact validity?

The reward of `distill.reward_source=teacher`, which needs no discriminator: r(x̂0) = -NELBO_teacher(x̂0) (a
Monte-Carlo bound on log p_teacher, R noise draws stratified in t), optionally minus the student's log-probability
of its own trajectory (then r is a one-sample estimate of -KL(q || p_teacher) at t = 0).
This probe draws `--num` texts from a student run with the
k-step sampler, scores each with the teacher's NELBO at several R, and reports the correlation of each score with
the text's share of valid sentences (Pearson and Spearman), beside the held-out data's NELBO for scale.
`bench/reward_probe.py` does the same for a DiDi run's discriminator.

Usage: python bench/teacher_reward_probe.py RUN --teacher TEACHER --grammar errands [--steps 4] [--num 512]
           [--repeats 1,4,16] [--grid-power 3] [--name NAME]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import write_results
from reward_probe import spearman

from didi import runs
from didi.api import Pipeline
from didi.diffusion import Kept, LogLinearSchedule
from didi.evaluation.evaluate import heldout_tokens
from didi.language import Grammar, Parser
from didi.methods.didi_instruct import teacher_evidence

COLUMNS = ["texts", "steps", "repeats", "nelbo_mean", "pearson", "spearman", "nelbo_valid", "nelbo_invalid",
           "valid_share"]


def valid_shares(parser: Parser, texts: list[str]) -> np.ndarray:
    out = []
    for text in texts:
        sentences = parser.sentences(text)
        out.append(sum(sp is not None for _, sp in sentences) / max(len(sentences), 1))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--grammar", default="stories")
    ap.add_argument("--steps", default="4")
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--repeats", default="1,4,16")
    ap.add_argument("--grid-power", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="teacher_reward_probe")
    args = ap.parse_args()
    teacher = runs.load_run(args.teacher, "cpu")
    tmodel = teacher.model.eval()
    mask = teacher.tokenizer.mask_id
    sched = LogLinearSchedule(teacher.config.diffusion.eps)
    eps = teacher.config.diffusion.eps
    parser = Parser(Grammar.load(args.grammar))
    pipe = Pipeline(runs.load_run(args.run, "cpu"))
    kept = Kept.for_run(teacher.config.data, teacher.tokenizer)
    gen = torch.Generator().manual_seed(args.seed)

    def nelbo(x: torch.Tensor, repeats: int) -> np.ndarray:  # per token, the reward reward_source=teacher uses
        out = [teacher_evidence(tmodel, x[i:i + 64], sched, mask, eps, repeats, gen,
                                kept(x[i:i + 64]) if kept else None) for i in range(0, len(x), 64)]
        return -torch.cat(out).double().numpy() / x.shape[1]

    rows = []
    data = heldout_tokens(pipe, args.num)
    rows.append({"texts": "held-out data", "steps": 0, "repeats": 8, "nelbo_mean": float(nelbo(data, 8).mean())})
    for steps in [int(s) for s in args.steps.split(",")]:
        with torch.inference_mode():
            out = pipe.sample(num=args.num, steps=steps, seed=args.seed, batch_size=args.num,
                              grid_power=args.grid_power)
        share = valid_shares(parser, out.text)
        full = share == 1.0
        for r in [int(v) for v in args.repeats.split(",")]:
            nel = nelbo(out.tokens, r)
            rows.append({"texts": "student", "steps": steps, "repeats": r, "nelbo_mean": float(nel.mean()),
                         "pearson": float(np.corrcoef(-nel, share)[0, 1]), "spearman": spearman(-nel, share),
                         "nelbo_valid": float(nel[full].mean()) if full.any() else float("nan"),
                         "nelbo_invalid": float(nel[~full].mean()) if (~full).any() else float("nan"),
                         "valid_share": float(share.mean())})
            print(rows[-1], flush=True)
    note = (f"{args.num} texts of {args.run} (the k-step sampler, grid power {args.grid_power}), each scored by the "
            f"teacher {args.teacher}'s NELBO per token with R noise draws stratified in t "
            "(`teacher_evidence`, the reward "
            "of `distill.reward_source=teacher`); correlations of -NELBO with the text's share "
            "of valid sentences (`bench/reward_probe.py` gives the discriminator's, for comparison).")
    path = write_results(args.name, rows, vars(args), COLUMNS, note)
    print(path.read_text())


if __name__ == "__main__":
    main()
