"""Teacher vs distilled student: judge perplexity, unigram entropy, NFE and wall-clock per row.

Every row draws `--num` samples (float64 draws, seed `--seed`) and scores them with the judge LM
(re-tokenized, first EOS counted); the held-out data row (same block length, same tokenizer) is the
reference. Finished rows are cached in `--work/<name>.rows.jsonl`, so a rerun only does what is missing.

Usage:
  python bench/distill_eval.py --teacher runs/en-teacher --student runs/en-student \\
      --teacher-steps 8,16,128,1024 --student-steps 8,16 --guided-steps 8 --num 256 --name distill_en
  python bench/distill_eval.py ... --extra ablate-no-group-norm=runs/abl1   # more students, 8 steps
  python bench/distill_eval.py ... --frontier-temperatures 0.8,0.9   # teacher PPL at each row's entropy

With `--frontier-temperatures`, the teacher at `--frontier-steps` is also sampled at those temperatures
(plus 1.0), and every other row gets the teacher's judge PPL at the same unigram entropy, interpolated
log-linearly between the two nearest teacher rows of that frontier (empty outside its entropy range),
and the ratio to it: below 1 is a gain that is not just a lower-entropy trade.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch
from common import write_results

import didi
from didi import runs
from didi.evaluation import load_judge, mean_unigram_entropy

COLUMNS = ["model", "steps", "sampler", "temperature", "judge_ppl", "entropy", "teacher_ppl_same_entropy",
           "ratio_same_entropy", "nfe", "total_evals", "s_per_sample", "tokens_per_s", "seed"]


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def heldout_texts(run_dir: str, num: int) -> tuple[list[str], torch.Tensor]:
    from didi.data import prepare_data

    run = runs.load_run(run_dir, "cpu")
    _, valid = prepare_data(run.config.data, run.tokenizer, run.config.model.length, show_progress=False)
    n = min(num, len(valid))
    tokens = valid.get(torch.arange(n))
    return run.tokenizer.decode_batch(tokens.tolist()), tokens


def sample_row(pipe, label: str, steps: int, guided: bool, num: int, seed: int, batch_size: int,
               temperature: float = 1.0) -> tuple[dict, list]:
    pipe.sample(num=2, steps=2, seed=seed + 1, guided=guided)  # warm-up: first-call costs stay out of the timing
    out = pipe.sample(num=num, steps=steps, seed=seed, batch_size=batch_size, guided=guided, progress=True,
                      temperature=temperature)
    L = out.tokens.shape[1]
    row = {"model": label, "steps": steps, "sampler": "RGAS" if guided else "ancestral", "temperature": temperature,
           "entropy": mean_unigram_entropy(out.tokens), "nfe": out.nfe.double().mean().item(),
           "total_evals": out.total_evals.double().mean().item(), "s_per_sample": out.seconds / num,
           "tokens_per_s": num * L / out.seconds, "seed": seed}
    return row, out.text


def same_entropy_ppl(frontier: list[dict], entropy: float) -> float | None:
    """The frontier's judge PPL at `entropy`: log-linear between the two nearest rows; None outside."""
    pts = sorted((r["entropy"], math.log(r["judge_ppl"])) for r in frontier)
    for (e0, l0), (e1, l1) in zip(pts, pts[1:]):
        if e0 <= entropy <= e1:
            return math.exp(l0 + (l1 - l0) * (entropy - e0) / (e1 - e0)) if e1 > e0 else math.exp(l0)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher-steps", default="8,16,128,1024")
    ap.add_argument("--student-steps", default="8,16")
    ap.add_argument("--guided-steps", default="", help="student step counts to also sample with RGAS")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=RUN",
                    help="another student (e.g. an ablation), sampled at --extra-steps")
    ap.add_argument("--extra-steps", default="8")
    ap.add_argument("--frontier-temperatures", default="", help="teacher temperatures below 1 for the matched-"
                    "entropy reference, e.g. 0.8,0.9")
    ap.add_argument("--frontier-steps", type=int, default=8)
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", default="smollm2-135m")
    ap.add_argument("--skip-data", action="store_true", help="no held-out data row")
    ap.add_argument("--name", default="distill_en")
    ap.add_argument("--work", default="runs/bench", help="where finished rows and samples are cached")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / f"{args.name}.rows.jsonl"
    done = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            r.setdefault("temperature", 1.0)  # rows cached before temperatures were recorded
            done[(r["model"], r["run"], r["steps"], r["sampler"], r["seed"], r.get("temperature", 1.0))] = r

    temps = [float(x) for x in args.frontier_temperatures.split(",") if x.strip()]
    plan = [] if args.skip_data else [("data (held-out)", args.teacher, 0, False, 1.0)]
    plan += [("teacher", args.teacher, s, False, 1.0) for s in ints(args.teacher_steps)]
    if temps and args.frontier_steps not in ints(args.teacher_steps):
        plan.append(("teacher", args.teacher, args.frontier_steps, False, 1.0))
    plan += [("teacher", args.teacher, args.frontier_steps, False, t) for t in temps if t != 1.0]
    plan += [("student", args.student, s, False, 1.0) for s in ints(args.student_steps)]
    plan += [("student", args.student, s, True, 1.0) for s in ints(args.guided_steps)]
    for item in args.extra:
        label, _, path = item.partition("=")
        plan += [(label, path, s, False, 1.0) for s in ints(args.extra_steps)]

    judge = None
    rows = []
    for label, path, steps, guided, temp in plan:
        key = (label, str(path), steps, "RGAS" if guided else ("data" if steps == 0 else "ancestral"), args.seed, temp)
        if key in done:
            rows.append(done[key])
            continue
        if judge is None:
            judge = load_judge(args.judge, batch_size=16)
        print(f"== {label} {steps} steps{' RGAS' if guided else ''}{f' T {temp}' if temp != 1.0 else ''}", flush=True)
        if steps == 0:
            texts, tokens = heldout_texts(path, args.num)
            row = {"model": label, "steps": 0, "sampler": "data", "entropy": mean_unigram_entropy(tokens),
                   "seed": args.seed}
        else:
            row, texts = sample_row(didi.load(path), label, steps, guided, args.num, args.seed, args.batch_size, temp)
        start = time.perf_counter()
        row["judge_ppl"] = judge.perplexity(texts)
        row["judge_seconds"] = time.perf_counter() - start
        row["run"] = str(path)
        print(json.dumps(row), flush=True)
        with cache.open("a") as f:
            f.write(json.dumps(row) + "\n")
        tag = f".T{temp}" if temp != 1.0 else ""
        stem = f"{args.name}.{label}.{steps}.{key[3]}{tag}.seed{args.seed}"
        sample_file = work / (re.sub(r"[^\w.()=+-]+", "_", stem) + ".txt")  # labels may hold "/" or spaces
        sample_file.write_text("\n=====\n".join(texts[:16]) + "\n")
        rows.append(row)

    if temps:
        frontier = [r for r in rows if r["model"] == "teacher" and r["steps"] == args.frontier_steps
                    and r["sampler"] == "ancestral"]
        for r in rows:
            if r in frontier or r["sampler"] == "data":
                continue
            ref = same_entropy_ppl(frontier, r["entropy"])
            r["teacher_ppl_same_entropy"] = ref
            r["ratio_same_entropy"] = r["judge_ppl"] / ref if ref else None
    settings = {k: v for k, v in vars(args).items() if k != "work"}
    notes = ("Judge: " + args.judge + ". entropy = mean per-sample unigram entropy of the model's token ids. "
             "nfe = student/teacher network calls per sequence; total_evals adds discriminator forwards and "
             "backwards (RGAS). teacher_ppl_same_entropy: the teacher at " + str(args.frontier_steps) + " steps, "
             "interpolated along its temperature frontier to the row's entropy (empty outside it); "
             "ratio_same_entropy = judge_ppl / that. Wall-clock on this CPU, batch " + str(args.batch_size) + ".")
    path = write_results(args.name, rows, settings, COLUMNS, notes)
    if temps:  # the frontier and every other row as a point: below the line is a gain at that entropy
        from didi.evaluation.plots import plot_frontier

        series = {f"teacher {args.frontier_steps} steps, T {min(temps + [1.0]):g}-{max(temps + [1.0]):g}":
                  [(r["entropy"], r["judge_ppl"]) for r in frontier]}
        for r in rows:
            if r not in frontier and r["sampler"] != "data":
                series[f"{r['model']} {r['steps']}{' RGAS' if r['sampler'] == 'RGAS' else ''}"] = \
                    [(r["entropy"], r["judge_ppl"])]
        plot_frontier(series, path.with_suffix(".png"))
    print(path.read_text())


if __name__ == "__main__":
    main()
