"""`didi demo`: offline, on the embedded corpus: train a tiny teacher, distil a few-step student from it, then
compare them side by side (NFE and wall-clock per sample)."""

from __future__ import annotations

import json
from pathlib import Path

from . import runs
from .api import load, train
from .config import preset
from .demo_corpus import demo_documents
from .errors import DidiError

DEMO_STEPS = (8, 16, 64, 256)
STUDENT_STEPS = (8, 16)


def run_demo(out: Path, minutes: float = 4.0, device: str = "cpu", num: int = 4, distill_minutes: float = 3.0) -> None:
    out = Path(out)
    if (out / runs.WEIGHTS).is_file():
        print(f"didi demo: found a trained teacher in {out}; sampling from it (delete the directory to retrain)")
    else:
        if out.exists() and any(out.iterdir()):
            raise DidiError(f"{out} exists and is not empty; choose another --out or delete it")
        corpus = out / "corpus.jsonl"
        runs.atomic_write_text(corpus, "".join(json.dumps({"text": t}) + "\n" for t in demo_documents()))
        cfg = preset("tiny", [f"data.source={corpus}", "data.tokenizer=bpe:1024", f"train.max_minutes={minutes}",
                              "train.max_steps=600", "train.batch_size=16", "train.warmup_steps=50",
                              "train.eval_every=200", "train.save_every=200", f"train.device={device}",
                              f"data.cache_dir={out / 'cache'}"])
        print(f"didi demo: training a tiny MDLM teacher for up to {minutes:g} minutes on {corpus} "
              f"(an embedded corpus of simple stories)")
        train(cfg, out)
    student = out / "student"
    if distill_minutes > 0:
        _distill_stage(out, student, distill_minutes, device)
    _table(out, student if (student / runs.WEIGHTS).is_file() else None, device, num)
    print("\nA full teacher sample at 256 steps:\n" + load(out, device=device).sample(num=1, steps=256, seed=1).text[0])


def _distill_stage(teacher: Path, student: Path, minutes: float, device: str) -> None:
    from .distill import distill, distill_preset

    if (student / runs.WEIGHTS).is_file():
        print(f"didi demo: found a distilled student in {student}; skipping distillation")
        return
    if student.exists() and any(student.iterdir()):
        raise DidiError(f"{student} exists without a finished student; delete it to distil again")
    print(f"\ndidi demo: distilling a few-step DiDi-Instruct student for up to {minutes:g} minutes into {student}")
    # smaller than the tiny preset: 4 x 4 rollouts per step and short warm-ups, so a few minutes give
    # the student some dozens of updates
    dcfg = distill_preset("tiny", ["max_steps=300", "batch_size=4", "group=4", "disc_only_steps=5",
                                   "warmup_steps=5", "ema=0.9"])
    distill(teacher, student, dcfg, overrides=[f"train.max_minutes={minutes}", "train.eval_every=0",
                                                 "train.save_every=50", f"train.device={device}"])


def _table(teacher: Path, student: Path | None, device: str, num: int) -> None:
    rows = [("teacher", teacher, s) for s in DEMO_STEPS]
    if student is not None:
        rows += [("student", student, s) for s in STUDENT_STEPS]
    pipes = {}
    print(f"\n{'model':<8} {'steps':>6} {'NFE/seq':>8} {'s/sample':>9}  first sample")
    for label, path, steps in rows:
        if label not in pipes:
            pipes[label] = load(path, device=device)
            pipes[label].sample(num=1, steps=2, seed=0)  # warm-up: first-call costs stay out of the timing
        pipe = pipes[label]
        s = pipe.sample(num=num, steps=steps, seed=0)
        text = s.text[0].replace("\n", " ")
        print(f"{label:<8} {steps:>6} {s.nfe_mean:>8.1f} {s.seconds / num:>9.4f}  {text[:100]}")
