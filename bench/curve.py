"""Learning curve of a run: sample every snapshot (`train.snapshot_every`) at a few step counts, judge it, and put
the judged quality beside the training metrics of the same iterations (for distillation: discriminator accuracy
and mean reward).

Usage:
  python bench/curve.py runs/ref/student --judge grammar:stories --steps 4,8 --num 256 --teacher runs/ref/teacher
      [--name curve_student] [--grid-power P] [--out bench/results]

The teacher (the distillation's starting point) is iteration 0. Rows are cached in `<run>/curve.rows.jsonl`, so
adding snapshots or step counts only samples what is new. Writes NAME.json, NAME.md and NAME.png.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, write_results

from didi import fileio, runs
from didi.api import Pipeline
from didi.evaluation import load_judge
from didi.prior import fingerprint

COLUMNS = ["iteration", "steps", "valid_sentences", "valid_texts", "choice_entropy_ratio", "nll_per_word",
           "disc_acc", "reward_mean", "teacher_nelbo", "reward_within_share", "entropy_metric", "kl", "noise_map_norm",
           "aux_loss", "gap", "student_entropy"]


def snapshots(run: Path) -> list[tuple[int, Path]]:
    out = []
    for p in sorted((run / runs.SNAPSHOTS).glob("step_*.safetensors")):
        m = re.fullmatch(r"step_(\d+)\.safetensors", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return out


def training_metrics(run: Path, ends: list[int]) -> dict[int, dict]:
    """Mean of each logged training metric over the window of iterations that ends at each snapshot of `ends`
    (the sorted iterations the curve samples; a window runs from the previous one, exclusive)."""
    rows, damaged = fileio.read_metrics(run / runs.METRICS)
    if damaged:
        print(f"curve: {run / runs.METRICS}: damaged lines {damaged} left out", flush=True)
    rows = [r for r in rows if "loss" in r]
    out: dict[int, dict] = {}
    for r in rows:
        i = bisect.bisect_left(ends, r["step"])  # the first sampled snapshot at or after this logged step
        if i < len(ends):
            out.setdefault(ends[i], {}).setdefault("_rows", []).append(r)
    for d in out.values():
        rs = d.pop("_rows")
        for k in ("disc_acc", "reward_mean", "teacher_nelbo", "reward_within_share", "entropy", "kl", "loss",
                  "noise_map_norm", "aux_loss", "gap", "student_entropy"):
            vals = [r[k] for r in rs if k in r]
            if vals:
                d["entropy_metric" if k == "entropy" else k] = float(np.mean(vals))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--teacher", help="the run distilled from: iteration 0")
    ap.add_argument("--judge", default="grammar:stories")
    ap.add_argument("--steps", default="4,8")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=1, help="use every k-th snapshot")
    ap.add_argument("--grid-power", type=float, help="the sampler's time grid (default: the run's own)")
    ap.add_argument("--name", help="result name (default curve_<run name>)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    run = Path(args.run)
    name = args.name or f"curve_{run.name}"
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    judge = load_judge(args.judge)
    cache_path = run / "curve.rows.jsonl"
    cache = {}
    if cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            r = json.loads(line)
            cache[(r["iteration"], r["steps"], r["num"], r["seed"], r["judge"], r.get("grid_power", 1.0),
                   r.get("prior", ""))] = r
    points = snapshots(run)[:: args.every]
    train = training_metrics(run, [it for it, _ in points]) if (run / runs.METRICS).is_file() else {}
    plan = ([(0, None)] if args.teacher else []) + points
    base = runs.load_run(run, "cpu", weights=str(points[0][1].relative_to(run))) if points else None
    grid = base.config.diffusion.grid_power if base is not None else 1.0  # the teacher samples on the student's grid
    if args.grid_power is not None:
        grid = args.grid_power
    # a run with a saved noise prior (`didi prior`) draws its code from it, as `didi sample` does; its fingerprint
    # keys the cache, so a refitted prior is sampled again
    run_prior, teacher_prior = fingerprint(run), fingerprint(args.teacher) if args.teacher else ""
    rows = []
    for it, path in plan:
        pipe, prior = None, teacher_prior if path is None else run_prior
        for s in steps:
            key = (it, s, args.num, args.seed, args.judge, grid, prior)
            if key not in cache:
                if pipe is None:
                    if path is None:
                        pipe = Pipeline(runs.load_run(args.teacher, "cpu"))
                    else:
                        base.model.load_state_dict(fileio.load_weights(path), strict=False)
                        pipe = Pipeline(base)
                with torch.inference_mode():
                    out = pipe.sample(num=args.num, steps=s, seed=args.seed, batch_size=128, grid_power=grid)
                r = {"iteration": it, "steps": s, "num": args.num, "seed": args.seed, "judge": args.judge,
                     "grid_power": grid, "prior": prior, **judge.score(out.text)}
                cache[key] = r
                with cache_path.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(json.dumps({k: r[k] for k in ("iteration", "steps", "valid_sentences", "choice_entropy_ratio")
                                  if k in r}), flush=True)
            rows.append({**cache[key], **train.get(it, {})})
    out_dir = Path(args.out)
    settings = dict(vars(args)) | {"noise_prior": {"run": run_prior, "teacher": teacher_prior}}
    drawn = "; the noise input drawn from the run's saved prior" if run_prior or teacher_prior else ""
    note = (f"Each row: the snapshot at `iteration` sampled at `steps` on the time grid of power {grid:g} (float64 "
            f"draws, seed {args.seed}, {args.num} samples), judged by {args.judge}; training metrics are means over "
            f"the iterations since the previous snapshot{drawn} (fingerprints under settings.noise_prior).")
    path = write_results(name, rows, settings, COLUMNS, note, out_dir=out_dir)
    plot(rows, steps, path.with_suffix(".png"), name)
    print(path.read_text())


def plot(rows: list[dict], steps: list[int], path: Path, title: str) -> None:
    from didi.evaluation.plots import _save, plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for s in steps:
        rs = sorted((r for r in rows if r["steps"] == s), key=lambda r: r["iteration"])
        a1.plot([r["iteration"] for r in rs], [r["valid_sentences"] for r in rs], marker="o", label=f"{s} steps")
        a1.plot([r["iteration"] for r in rs], [r["choice_entropy_ratio"] for r in rs], linestyle="--",
                label=f"{s} steps: choice entropy / true")
    a1.set_ylabel("valid sentences")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a1.set_title(title)
    first = sorted((r for r in rows if r["steps"] == steps[0] and ("reward_mean" in r or "gap" in r)),
                   key=lambda r: r["iteration"])
    its = [r["iteration"] for r in first]
    if first and "gap" in first[0]:  # D-MMD: the auxiliary's loss, the teacher-auxiliary gap, the student's entropy
        for k, label in (("aux_loss", "auxiliary loss"), ("gap", "KL(auxiliary || teacher) at z_s"),
                         ("student_entropy", "student entropy at z_t (nats)")):
            a2.plot(its, [r[k] for r in first], label=label)
        a2.legend(fontsize=8)
    elif first and "disc_acc" in first[0]:
        a2.plot(its, [r["disc_acc"] for r in first], label="discriminator accuracy")
        a2.plot(its, [r["reward_mean"] for r in first], label="mean reward")
        a2.legend(fontsize=8)
    elif first:  # reward_source=teacher: no discriminator; the reward is the teacher's bound in nats per text
        a2.plot(its, [r["reward_mean"] for r in first], label="mean reward (teacher's -NELBO, nats per text)")
        a2.set_ylabel("nats")
        a2.legend(fontsize=8)
    a2.set_xlabel("distillation iteration")
    a2.grid(alpha=0.3)
    _save(fig, path)


if __name__ == "__main__":
    main()
