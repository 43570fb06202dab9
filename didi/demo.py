"""`didi demo`: offline, on the built-in reference language (the `stories` grammar): train a tiny teacher on a
corpus drawn from it, distil a few-step student, then show both side by side with the exact share of valid
sentences beside each row (the grammar decides validity exactly), NFE and wall-clock per sample."""

from __future__ import annotations

from pathlib import Path

from . import runs
from .api import load, train
from .config import preset
from .errors import DidiError

GRAMMAR = "stories"
DEMO_STEPS = (2, 4, 8, 32, 128)
STUDENT_STEPS = (2, 4, 8)


def run_demo(out: Path, minutes: float = 5.0, device: str = "cpu", num: int = 64, distill_minutes: float = 3.0) -> None:
    from .language import Grammar, write_corpus

    out = Path(out)
    if (out / runs.WEIGHTS).is_file():
        print(f"didi demo: found a trained teacher in {out}; sampling from it (delete the directory to retrain)")
    else:
        if out.exists() and any(out.iterdir()):
            raise DidiError(f"{out} exists and is not empty; choose another --out or delete it")
        corpus = write_corpus(Grammar.load(GRAMMAR), 20_000, 0, out / "corpus.jsonl")
        cfg = preset("lang-tiny", [f"data.source={corpus}", f"train.max_minutes={minutes}", "train.max_steps=900",
                                   "train.eval_every=300",
                                   "train.save_every=200", "train.snapshot_every=0", f"train.device={device}",
                                   f"data.cache_dir={out / 'cache'}"])
        print(f"didi demo: training a tiny MDLM teacher for up to {minutes:g} minutes on {corpus} "
              f"(20,000 texts of the built-in `{GRAMMAR}` grammar, one per row)")
        train(cfg, out)
    student = out / "student"
    if distill_minutes > 0:
        _distill_stage(out, student, distill_minutes, device)
    _table(out, student if (student / runs.WEIGHTS).is_file() else None, device, num)
    print("\nA full teacher sample at 128 steps:\n" + load(out, device=device).sample(num=1, steps=128, seed=1).text[0])


def _distill_stage(teacher: Path, student: Path, minutes: float, device: str) -> None:
    from .distill import distill, distill_preset

    if (student / runs.WEIGHTS).is_file():
        print(f"didi demo: found a distilled student in {student}; skipping distillation")
        return
    if student.exists() and any(student.iterdir()):
        raise DidiError(f"{student} exists without a finished student; delete it to distil again")
    print(f"\ndidi demo: distilling a few-step DiDi-Instruct student for up to {minutes:g} minutes into {student}")
    # the lang recipe, shortened to the demo's few minutes
    dcfg = distill_preset("lang", ["max_steps=150", "disc_only_steps=10", "warmup_steps=5", "student_lr=1e-4"])
    distill(teacher, student, dcfg, overrides=[f"train.max_minutes={minutes}", "train.eval_every=0",
                                                 "train.save_every=50", f"train.device={device}"])


def _table(teacher: Path, student: Path | None, device: str, num: int) -> None:
    from .language import Grammar, Parser, score_texts

    grammar = Grammar.load(GRAMMAR)
    parser = Parser(grammar)
    rows = [("teacher", teacher, s) for s in DEMO_STEPS]
    if student is not None:
        rows += [("student", student, s) for s in STUDENT_STEPS]
    pipes = {}
    print(f"\n{num} samples per row; valid: the share of sentences (and whole texts) the grammar accepts")
    print(f"{'model':<8} {'steps':>6} {'valid sent.':>11} {'valid texts':>11} {'NFE/seq':>8} {'s/sample':>9}  "
          f"first sample")
    for label, path, steps in rows:
        if label not in pipes:
            pipes[label] = load(path, device=device)
            pipes[label].sample(num=1, steps=2, seed=0)  # warm-up: first-call costs stay out of the timing
        pipe = pipes[label]
        s = pipe.sample(num=num, steps=steps, seed=0)
        score = score_texts(grammar, s.text, parser)
        text = s.text[0].replace("\n", " ")
        print(f"{label:<8} {steps:>6} {score['valid_sentences']:>11.2f} {score['valid_texts']:>11.2f} "
              f"{s.nfe_mean:>8.1f} {s.seconds / num:>9.4f}  {text[:90]}")
