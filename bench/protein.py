"""The protein benchmark: an amino-acid MDLM teacher, an AR protein judge, a DiDi-Instruct student,
and rows with protein metrics. Stages and rows are cached under --work like bench/run.py.

Stages (CPU-sized, preset protein-tiny: 4 blocks / 256 hidden, one protein per row of 256):
  teacher  MDLM on ../shared/data/protein/train.fasta.gz, --teacher-minutes (30)
  judge    AR model of the same shape on the same split, --judge-minutes (15): the perplexity judge
  didi     DiDi-Instruct student (preset tiny), --didi-minutes (20)
Rows (--num samples each, float64 draws): held-out proteins, teacher at --teacher-steps, student at
--student-steps. Columns: judge PPL under the AR protein model, composition JS/KL and length W1 to
held-out proteins, diversity, novelty, low complexity, NFE, wall-clock.

Usage: python bench/protein.py [--work runs/protein-bench] [--num 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import ints, stage

import didi
from didi.config import preset
from didi.distill import distill, distill_preset
from didi.evaluation.evaluate import RowCache, RowSpec, git_commit, run_rows, write_reports

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs" / "protein-bench"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "protein"),
                    help="directory with train.fasta.gz and valid.fasta.gz")
    for name in ("teacher", "judge", "didi"):
        ap.add_argument(f"--{name}", help=f"use this finished run as the {name} stage")
    ap.add_argument("--teacher-minutes", type=float, default=30.0)
    ap.add_argument("--judge-minutes", type=float, default=15.0)
    ap.add_argument("--didi-minutes", type=float, default=20.0)
    ap.add_argument("--teacher-steps", default="8,16,32,64,256")
    ap.add_argument("--student-steps", default="8,16,32")
    ap.add_argument("--num", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="protein")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    train_src, valid_src = data / "train.fasta.gz", data / "valid.fasta.gz"
    for f in (train_src, valid_src):
        if not f.is_file():
            raise SystemExit(f"bench: {f} not found (pass --data DIR with train.fasta.gz and valid.fasta.gz)")
    base = [f"data.source={train_src}", f"data.valid_source={valid_src}", "train.eval_every=50",
            "train.save_every=100"]
    teacher = stage(work, "teacher", args.teacher, lambda out, resume: didi.train(
        preset("protein-tiny", base + ["train.max_steps=1000", f"train.max_minutes={args.teacher_minutes}"]),
        out, resume=resume))
    judge = stage(work, "judge", args.judge, lambda out, resume: didi.train(
        preset("protein-tiny", base + ["model.arch=ar", "train.max_steps=500",
                                       f"train.max_minutes={args.judge_minutes}"]), out, resume=resume))
    student = stage(work, "didi", args.didi, lambda out, resume: distill(
        None if resume else teacher, out, None if resume else distill_preset("tiny"),
        overrides=[f"train.max_minutes={args.didi_minutes}"], resume=resume))

    T, S = str(teacher), str(student)
    specs = [RowSpec("data", T, 0, "data")]
    # rows in order of importance (the report is rewritten after each): the teacher at the student's step
    # counts and at 8x those, then the students, then the other teacher rows
    student_steps = ints(args.student_steps)
    first = [s for s in ints(args.teacher_steps) if s in student_steps or s // 8 in student_steps]
    specs += [RowSpec("teacher", T, s) for s in first]
    specs += [RowSpec("didi", S, s) for s in student_steps]
    specs += [RowSpec("teacher", T, s) for s in ints(args.teacher_steps) if s not in first]
    cache = RowCache(work / f"{args.name}.rows.jsonl").load()
    meta = {"judge": str(judge), "num": args.num, "seed": args.seed, "commit": git_commit(),
            "settings": vars(args) | {"teacher": T, "judge": str(judge), "didi": S}}
    order = {"data": 0, "teacher": 1, "didi": 2}
    for i in range(len(specs)):
        rows = run_rows(specs[: i + 1], num=args.num, seed=args.seed, judge_name=str(judge), cache=cache,
                        samples_dir=work / "samples")
        rows = sorted(rows, key=lambda r: (order.get(r["model"], 9), r["steps"]))
        report = write_reports(rows, RESULTS, args.name, meta, None)
    print(report["markdown"].read_text())


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
