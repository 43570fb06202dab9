"""`didi demo`: offline, on the built-in reference language (the `stories` grammar): train a tiny teacher on a
corpus drawn from it, train a few-step student from it, then show both side by side with the exact share of valid
sentences and texts beside each row (the grammar decides validity exactly), the diversity of the choices made (choice
entropy over its true value), NFE and wall-clock per sample.

The student is the reference-language recipe's first stage, which the comparison in docs/results.md found to be the
one method that closes the few-step gap at the teacher's diversity: a latent-variable student (`--method latent`,
preset latent-lang, started from the teacher) whose 16-dimensional code is drawn from the exemplar prior
(`didi prior --components 0`).

Both are the lang-tiny shape at half its width (hidden 128, 1.4 M parameters), trained in bf16 autocast where the CPU
has AVX512-BF16: within the demo's minutes that gave a better teacher and student than the full width (measured on 2
cores, 2026-12-07: the teacher's 128-step valid sentences 0.81 against 0.73, the student's at 4 steps 0.66 against
0.63). Whole texts stay out of reach in ten minutes: keeping the names of a text consistent across its sentences is
learned late (this teacher trained alone for 9 minutes writes none at 128 steps; the comparison's 30-minute teacher 6 %
at 256; docs/reference-log.md E78)."""

from __future__ import annotations

from pathlib import Path

from . import runs
from .api import load, train
from .config import preset
from .errors import DidiError

GRAMMAR = "stories"
DEMO_STEPS = (2, 4, 8, 128)
STUDENT_STEPS = (2, 4, 8)
DEMO_SHAPE = ("model.hidden_dim=128",)  # half the lang-tiny width: 1.4 M parameters, 2.5-3x the steps per minute
DEMO_STEPS_TEACHER = {False: 1500, True: 1800}  # the schedules' lengths, about what the minutes fit (float32, bf16)
DEMO_STEPS_LATENT = {False: 800, True: 1000}


def run_demo(out: Path, minutes: float = 4.5, device: str = "cpu", num: int = 256,
             distill_minutes: float = 3.5) -> None:
    from .language import Grammar, write_corpus

    out = Path(out)
    if (out / runs.WEIGHTS).is_file():
        print(f"didi demo: found a trained teacher in {out}; sampling from it (delete the directory to retrain)")
    else:
        if out.exists() and any(out.iterdir()):
            raise DidiError(f"{out} exists and is not empty; choose another --out or delete it")
        corpus = write_corpus(Grammar.load(GRAMMAR), 20_000, 0, out / "corpus.jsonl")
        fast = _fast_cpu(device)
        cfg = preset("lang-tiny", [f"data.source={corpus}", f"train.max_minutes={minutes}",
                                   *DEMO_SHAPE, f"train.max_steps={DEMO_STEPS_TEACHER[bool(fast)]}",
                                   "train.eval_every=300",
                                   "train.save_every=200", "train.snapshot_every=0", f"train.device={device}",
                                   f"data.cache_dir={out / 'cache'}", *fast])
        print(f"didi demo: training a tiny MDLM teacher for up to {minutes:g} minutes on {corpus} "
              f"(20,000 texts of the built-in `{GRAMMAR}` grammar, one per row)")
        train(cfg, out)
    student = out / "latent"  # not "student": a directory from an older demo held a DiDi-Instruct student there
    if distill_minutes > 0:
        _distill_stage(out, student, distill_minutes, device)
    _table(out, student if (student / runs.WEIGHTS).is_file() else None, device, num)
    print("\nA full teacher sample at 128 steps:\n" + load(out, device=device).sample(num=1, steps=128, seed=1).text[0])


def _fast_cpu(device: str) -> list[str]:
    """bf16 autocast on a CPU with AVX512-BF16 (`train.cpu_bf16`: forward + backward 1.8x faster there,
    bench/results/cpu_bf16.md), so the demo's minutes buy more steps; float32 elsewhere."""
    if device != "cpu":
        return []
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return ["train.cpu_bf16=true"] if "avx512_bf16" in flags else []


def _distill_stage(teacher: Path, student: Path, minutes: float, device: str) -> None:
    from .distill import distill, distill_preset
    from .prior import load_prior, write_prior

    if (student / runs.WEIGHTS).is_file():
        print(f"didi demo: found a trained latent student in {student}; sampling from it (delete it to train again)")
        if load_prior(student) is None:  # stopped between training and the prior: finish it
            write_prior(student, 0)
        return
    if student.exists() and any(student.iterdir()):
        raise DidiError(f"{student} exists without a finished student; delete it to train the student again")
    print(f"\ndidi demo: training a few-step latent student from the teacher for up to {minutes:g} minutes into "
          f"{student}")
    # the latent-lang preset with its schedule shortened to the demo's few minutes
    fast = _fast_cpu(device)
    dcfg = distill_preset("latent-lang", [f"max_steps={DEMO_STEPS_LATENT[bool(fast)]}", "warmup_steps=40"])
    distill(teacher, student, dcfg, overrides=[f"train.max_minutes={minutes}", "train.eval_every=0",
                                                 "train.save_every=100", f"train.device={device}", *fast])
    write_prior(student, 0)  # the exemplar prior: the codes of 8,192 training texts; sampling draws from it
    print("didi demo: the student draws its code from the exemplar prior (noise_prior.safetensors)")


def _table(teacher: Path, student: Path | None, device: str, num: int) -> None:
    from .language import Grammar, Parser, score_texts

    grammar = Grammar.load(GRAMMAR)
    parser = Parser(grammar)
    rows = [("teacher", teacher, s) for s in DEMO_STEPS]
    if student is not None:
        rows += [("student", student, s) for s in STUDENT_STEPS]
    pipes = {}
    print(f"\n{num} samples per row; valid: the share of sentences (and the number of whole texts) the grammar "
          "accepts; diversity: the entropy of the grammar's choices in the samples over its true value (1 = the "
          "language's own)")
    print(f"{'model':<8} {'steps':>6} {'valid sent.':>11} {'valid texts':>11} {'diversity':>9} {'NFE/seq':>8} "
          f"{'s/sample':>9}  first sample")
    for label, path, steps in rows:
        if label not in pipes:
            pipes[label] = load(path, device=device)
            pipes[label].sample(num=1, steps=2, seed=0)  # warm-up: first-call costs stay out of the timing
        pipe = pipes[label]
        s = pipe.sample(num=num, steps=steps, seed=0)
        score = score_texts(grammar, s.text, parser)
        text = s.text[0].replace("\n", " ")
        texts = f"{round(score['valid_texts'] * num)}/{num}"
        print(f"{label:<8} {steps:>6} {score['valid_sentences']:>11.2f} {texts:>11} "
              f"{score['choice_entropy_ratio']:>9.2f} {s.nfe_mean:>8.1f} {s.seconds / num:>9.4f}  {text[:70]}")
