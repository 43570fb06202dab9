"""Diagnostic, not a method: DiDi-Instruct's policy gradient with the discriminator's reward replaced by an oracle
that reads the grammar, to tell whether the reward or the rest of the machinery (rollouts, credit, learning rate,
iterations) limits the student.

The run is `didi distill` in every respect (the discriminator still trains, so the cost per iteration is the same,
and its accuracy is logged) except the rewards: with `reward_states=path` each rollout's every step gets the
oracle reward of its final text x̂0 (its reward-to-go, since earlier states get none), normalized per step within
groups like the discriminator's rewards. Oracle: the share of x̂0's sentences that are valid. It rewards validity
alone (no term for diversity beyond the recipe's KL and entropy bonus), so it shows how fast this machinery can
raise validity when the reward is exact, and what that costs in diversity; with `--set entropy_reward=B` the
method's exact surprisal term joins it as in `didi distill`.

Usage: python bench/oracle_reward.py --teacher runs/lang-teacher --out runs/oracle --grammar stories \
           [--minutes 30] [--steps 1300] [--set KEY=VALUE ...]
then: python bench/curve.py runs/oracle --teacher runs/lang-teacher --judge grammar:stories
Distill settings are those of `didi distill --preset lang --student-lr 1e-4 --set diffusion.grid_power=3`.
"""

from __future__ import annotations

import argparse

import torch

import didi.methods.didi_instruct as di
from didi.distill import distill, distill_preset
from didi.language import Grammar, Parser
from didi.tokenizers import Tokenizer


def oracle_method(grammar: Grammar, tokenizer: Tokenizer):
    parser = Parser(grammar)
    eos = tokenizer.eos_id

    def valid_share(x_hat: torch.Tensor) -> torch.Tensor:
        out = []
        for row in x_hat.tolist():
            ids = row[1:]
            ids = ids[:ids.index(eos)] if eos in ids else ids
            sentences = parser.sentences(tokenizer.decode(ids))
            out.append(sum(sp is not None for _, sp in sentences) / max(len(sentences), 1))
        return torch.tensor(out, dtype=torch.float32, device=x_hat.device)

    class Oracle(di.DiDiInstruct):
        def _path_rewards(self, ctx, states, x_hat, grid, real, noise_real, pick, surprisal=None):
            _, metrics = super()._path_rewards(ctx, states, x_hat, grid, real, noise_real, pick)  # trains D
            r = valid_share(x_hat)
            metrics["oracle_valid"] = r.mean()
            k, n = len(states), x_hat.shape[0]
            togo = r[:, None].expand(n, k)  # only the final text is rewarded: every step's reward-to-go
            if self.dcfg.entropy_reward and surprisal is not None:  # as the method adds it (distill.entropy_reward)
                metrics["surprisal"] = surprisal.sum(1).mean()
                togo = togo + self.dcfg.entropy_reward * surprisal.flip(1).cumsum(1).flip(1)
            valid = torch.ones(n, dtype=torch.bool, device=x_hat.device)
            adv = torch.stack([self._advantage(ctx, togo[:, s], valid) for s in range(k)], 1)
            return adv, metrics

    return Oracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grammar", default="stories")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=1300)
    ap.add_argument("--student-lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="distill KEY=VALUE")
    ap.add_argument("--cpu-bf16", action="store_true", help="train.cpu_bf16")
    args = ap.parse_args()
    dcfg = distill_preset("lang", [f"max_steps={args.steps}", f"student_lr={args.student_lr}", *args.set])
    tok = Tokenizer.load(f"{args.teacher}/tokenizer")
    di.DiDiInstruct = oracle_method(Grammar.load(args.grammar), tok)
    distill(args.teacher, args.out, dcfg, overrides=["diffusion.grid_power=3", f"train.max_minutes={args.minutes}",
                                                      f"train.seed={args.seed}", "train.snapshot_every=100",
                                                      f"train.cpu_bf16={str(args.cpu_bf16).lower()}"])


if __name__ == "__main__":
    main()
