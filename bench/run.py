"""The didi benchmark: teacher, AR baseline, DiDi-Instruct and SDTT students on one corpus, every
row scored the same way, plus a speed section. Stages and rows are cached under --work, so a rerun (or a
run after a crash) skips what is finished and resumes a half-trained stage exactly.

Stages (CPU-sized, `tiny` shape, length 128, a byte-level BPE of 8,192 entries trained on the train split):
  teacher  MDLM, --teacher-minutes (30) / 1,000 steps
  ar       causal transformer of the same shape, same data, tokenizer, steps and wall-clock cap
  didi     DiDi-Instruct student (preset tiny), --didi-minutes (20)
  sdtt     SDTT student (preset sdtt-tiny: 7 rounds 1024 -> 8 steps), --sdtt-minutes (20)
Rows (256 samples each, float64 draws, seed --seed for all): held-out data, teacher at 8 ... 1024 steps,
DiDi at 4/8/16/32 (ancestral, then RGAS), SDTT at 8/16/32, AR with a KV cache, then a temperature sweep of
DiDi 8, SDTT 8, the teacher at 8 and at 1024 steps (the gen-PPL/entropy frontier). Rows run in order of
importance and the report is rewritten after each one, so a stopped run still leaves a valid table.
Speed: seconds per sequence for DiDi at 8 steps, the teacher at 1024 and AR, one process, as ratios.

Usage:
  python bench/run.py                                    # everything, into runs/benchmark and bench/results
  python bench/run.py --teacher runs/en-teacher --didi runs/en-student   # reuse trained runs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from common import floats, ints, stage, stage_facts, stage_markdown

import didi
from didi.config import preset
from didi.distill import distill, distill_preset
from didi.evaluation.evaluate import RowCache, RowSpec, git_commit, run_rows, write_reports

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
COLUMNS_NOTE = ("nfe: network calls of the generator per sequence (mean; nfe_max the batch maximum); total_evals "
                "adds RGAS discriminator forwards and backwards; tokens_per_step = length / steps; s_per_sample and "
                "tokens_per_s are wall-clock on this machine (batch 64, after a warm-up call).")


def speed(paths: dict[str, Path], batch: int, reps: int, seed: int) -> list[dict]:
    """Wall-clock per generated sequence, one process, the same batch for every generator; median of reps."""
    plan = [("didi", paths["didi"], 8), ("teacher", paths["teacher"], 1024), ("ar", paths["ar"], 0)]
    rows = []
    for label, path, steps in plan:
        pipe = didi.load(path)
        steps = steps or pipe.config.model.length
        pipe.sample(num=2, steps=2, seed=seed + 1)  # warm-up
        secs = [pipe.sample(num=batch, steps=steps, seed=seed + r).seconds for r in range(reps)]
        s = statistics.median(secs) / batch
        rows.append({"model": label, "steps": steps, "batch": batch, "s_per_sequence": s,
                     "tokens_per_s": pipe.config.model.length / s, "reps": reps})
    base = next(r for r in rows if r["model"] == "teacher")["s_per_sequence"]
    ar = next(r for r in rows if r["model"] == "ar")["s_per_sequence"]
    for r in rows:
        r["speedup_vs_teacher_1024"] = base / r["s_per_sequence"]
        r["speedup_vs_ar"] = ar / r["s_per_sequence"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs" / "benchmark"), help="stage runs and the row cache")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "english"),
                    help="corpus directory with train.jsonl and valid.jsonl")
    for name in ("teacher", "ar", "didi", "sdtt"):
        ap.add_argument(f"--{name}", help=f"use this finished run as the {name} stage")
    ap.add_argument("--teacher-minutes", type=float, default=30.0)
    ap.add_argument("--didi-minutes", type=float, default=20.0)
    ap.add_argument("--sdtt-minutes", type=float, default=20.0)
    ap.add_argument("--teacher-steps", default="8,16,32,64,128,256,1024")
    ap.add_argument("--didi-steps", default="4,8,16,32")
    ap.add_argument("--rgas-steps", default="4,8,16,32")
    ap.add_argument("--sdtt-steps", default="8,16,32")
    ap.add_argument("--frontier-temperatures", default="0.9,0.8",
                    help="extra temperatures for DiDi 8, SDTT 8, teacher 8 and 1024 (the gen-PPL/entropy frontier)")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", default="smollm2-135m")
    ap.add_argument("--speed-batch", type=int, default=32)
    ap.add_argument("--speed-reps", type=int, default=3)
    ap.add_argument("--name", default="benchmark")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    train_src, valid_src = data / "train.jsonl", data / "valid.jsonl"
    for f in (train_src, valid_src):
        if not f.is_file():
            raise SystemExit(f"bench: {f} not found (pass --data DIR with train.jsonl and valid.jsonl)")
    base = [f"data.source={train_src}", f"data.valid_source={valid_src}", "train.max_steps=1000",
            f"train.max_minutes={args.teacher_minutes}", "train.eval_every=50", "train.save_every=100"]

    teacher = stage(work, "teacher", args.teacher, lambda out, resume: didi.train(
        preset("tiny", base + ["data.tokenizer=bpe:8192"]), out, resume=resume))
    ar = stage(work, "ar", args.ar, lambda out, resume: didi.train(
        preset("tiny", base + [f"data.tokenizer={teacher / 'tokenizer'}", "model.arch=ar"]), out, resume=resume))
    didi_run = stage(work, "didi", args.didi, lambda out, resume: distill(
        None if resume else teacher, out, None if resume else distill_preset("tiny"),
        overrides=[f"train.max_minutes={args.didi_minutes}"], resume=resume))
    sdtt = stage(work, "sdtt", args.sdtt, lambda out, resume: distill(
        None if resume else teacher, out, None if resume else distill_preset("sdtt-tiny"),
        overrides=[f"train.max_minutes={args.sdtt_minutes}"], resume=resume))
    paths = {"teacher": teacher, "ar": ar, "didi": didi_run, "sdtt": sdtt}
    settings = {k: v for k, v in vars(args).items()} | {k: str(v) for k, v in paths.items()}

    speed_file = work / "speed.json"
    if not speed_file.is_file():
        print("bench: speed section", flush=True)
        speed_file.write_text(json.dumps(speed(paths, args.speed_batch, args.speed_reps, args.seed), indent=2))
    speed_rows = json.loads(speed_file.read_text())

    T, D, S = str(teacher), str(didi_run), str(sdtt)
    # most informative rows first: a stopped run still has the comparison that matters
    specs = [RowSpec("data", T, 0, "data")]
    specs += [RowSpec("teacher", T, s) for s in ints(args.teacher_steps) if s in (8, 16, 128, 1024)]
    specs += [RowSpec("didi", D, s) for s in ints(args.didi_steps) if s in (8, 16)]
    specs += [RowSpec("sdtt", S, s) for s in ints(args.sdtt_steps)]
    specs += [RowSpec("ar", str(ar), didi.load(ar).config.model.length, "ar+kv")]
    specs += [RowSpec("teacher", T, s) for s in ints(args.teacher_steps) if s not in (8, 16, 128, 1024)]
    specs += [RowSpec("didi", D, s) for s in ints(args.didi_steps) if s not in (8, 16)]
    specs += [RowSpec("didi", D, s, "RGAS") for s in ints(args.rgas_steps)]
    for t in floats(args.frontier_temperatures):  # the entropy frontier: 8-step students and teacher
        specs += [RowSpec("didi", D, 8, temperature=t), RowSpec("sdtt", S, 8, temperature=t),
                  RowSpec("teacher", T, 8, temperature=t)]
    specs += [RowSpec("teacher", T, 1024, temperature=t) for t in floats(args.frontier_temperatures)]  # the dearest

    cache = RowCache(work / f"{args.name}.rows.jsonl").load()
    meta = {"judge": args.judge, "num": args.num, "seed": args.seed, "commit": git_commit(), "settings": settings,
            "speed": speed_rows, "stages": stage_facts(paths), "columns_note": COLUMNS_NOTE}
    order = {("data", "data"): 0, ("teacher", "ancestral"): 1, ("didi", "ancestral"): 2, ("didi", "RGAS"): 3,
             ("sdtt", "ancestral"): 4, ("ar", "ar+kv"): 5}
    for i in range(len(specs)):  # one row at a time, report rewritten after each
        rows = run_rows(specs[: i + 1], num=args.num, seed=args.seed, judge_name=args.judge, cache=cache,
                        samples_dir=work / "samples")
        rows = sorted(rows, key=lambda r: (order.get((r["model"], r["sampler"]), 9), r["steps"], -r["temperature"]))
        target = rows[0]["entropy"] if rows and rows[0]["sampler"] == "data" else None
        report = write_reports(rows, RESULTS, args.name, meta, target)
    md = report["markdown"]
    md.write_text(md.read_text() + "\n" + speed_markdown(speed_rows) + "\n" + stage_markdown(meta["stages"]))
    print(md.read_text())


def speed_markdown(rows: list[dict]) -> str:
    lines = ["## Speed (one process, same batch, median of reps)", "",
             "| model | steps | batch | s_per_sequence | tokens_per_s | speedup_vs_teacher_1024 | speedup_vs_ar |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['steps']} | {r['batch']} | {r['s_per_sequence']:.4f} | {r['tokens_per_s']:,.0f} | "
              f"{r['speedup_vs_teacher_1024']:.1f}x | {r['speedup_vs_ar']:.2f}x |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
