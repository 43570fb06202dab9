"""`didi demo`: offline, on the built-in reference language (the `stories` grammar), distil a few-step student from a
finished MDLM teacher, then show both side by side with the exact share of valid sentences and texts beside each row
(the grammar decides validity exactly), the diversity of the choices made (choice entropy over its true value), NFE
and wall-clock per sample.

The teacher ships with didi (`didi/assets/stories-teacher`, `shipped_teacher()`): the `lang-tiny` shape (4.3 M
parameters) trained for 5,000 steps on 50,000 texts of the grammar, stored in bf16; docs/results.md ("The demo") gives
the two commands that made it and `pack_teacher` the step that stores it. The student is the reference-language
recipe's first stage, which the comparison in docs/results.md found to be the one method that closes the few-step gap
at the teacher's diversity: a latent-variable student (`--method latent`, preset latent-lang on a schedule shortened to
the demo's minutes, started from the teacher) whose 16-dimensional code is drawn from the exemplar prior
(`didi prior --components 0`).

`didi demo --from-scratch` trains the teacher too, inside the same ten minutes, at half the lang-tiny width (1.4 M
parameters): its student beats it at few steps, but neither writes a wholly valid text, because keeping a text's names
consistent across its sentences is learned late (docs/reference-log.md E78)."""

from __future__ import annotations

from pathlib import Path

from . import runs
from .api import load, train
from .config import RunConfig, preset
from .errors import DidiError

GRAMMAR = "stories"
DEMO_STEPS = (2, 4, 8, 128)
STUDENT_STEPS = (2, 4, 8)
ASSET = Path(__file__).parent / "assets" / "stories-teacher"
SCRATCH_SHAPE = ("model.hidden_dim=128",)  # half the lang-tiny width: 1.4 M parameters, 2.5-3x the steps per minute
SCRATCH_STEPS_TEACHER = {False: 1500, True: 1800}  # the schedules' lengths, about what the minutes fit (float32, bf16)
# the latent stage's schedule (float32, bf16): what its minutes fit from the half-width teacher and from the shipped one
# (the shipped one's bf16 length measured: 750 steps in 7 minutes on 2 cores; its float32 length is that over the
# 1.8x bf16 speed-up, not measured)
SCRATCH_STEPS_LATENT = {False: 800, True: 1000}
SHIPPED_STEPS_LATENT = {False: 400, True: 750}
TEACHER_DONE = "teacher.done"  # written when a --from-scratch teacher finished; without it a rerun resumes it
SCRATCH_TEXTS = 20_000  # the corpus of a --from-scratch demo
SHIPPED_TEXTS = 50_000  # the corpus the shipped teacher was trained on (`didi language write stories --seed 0`)


def shipped_teacher() -> Path:
    """The finished `stories` teacher that ships inside the package (a run directory `didi.load` reads)."""
    if not (ASSET / runs.WEIGHTS).is_file():
        raise DidiError(f"the shipped teacher is missing from {ASSET}; reinstall didi, or run "
                        "`didi demo --from-scratch`")
    return ASSET


def run_demo(out: Path, *, from_scratch: bool = False, minutes: float = 4.5, distill_minutes: float | None = None,
             device: str = "cpu", num: int = 256, latent_steps: int | None = None) -> None:
    """The demo into `out` (the corpus, the student in out/latent; with from_scratch the teacher in `out` itself).
    A rerun samples what an earlier run finished instead of training again. minutes: the teacher's training time
    (from_scratch); distill_minutes: the student's (default 8 from the shipped teacher, 3.5 from scratch; 0 skips it);
    latent_steps replaces the student's schedule length."""
    from .language import Grammar, write_corpus

    out = Path(out)
    fast = _fast_cpu(device)
    made_here = (out / runs.CONFIG).is_file()  # a teacher run an earlier --from-scratch demo started in `out`
    if out.exists() and any(out.iterdir()):
        if not (made_here or (out / "corpus.jsonl").is_file()):
            raise DidiError(f"{out} exists and is not a demo directory; choose another --out or delete it")
        if from_scratch and not made_here:
            raise DidiError(f"{out} holds a demo from the shipped teacher; choose another --out for --from-scratch")
    scratch = from_scratch or made_here
    teacher = out if scratch else shipped_teacher()
    corpus = out / "corpus.jsonl"
    if not corpus.is_file():
        write_corpus(Grammar.load(GRAMMAR), SCRATCH_TEXTS if scratch else SHIPPED_TEXTS, 0, corpus)
    if made_here and (out / TEACHER_DONE).is_file():
        print(f"didi demo: found a teacher trained by an earlier --from-scratch demo in {out}; using it "
              "(delete the directory to start again)")
    elif made_here:  # stopped before it finished (or made by a demo that kept no marker): finish it exactly
        print(f"didi demo: resuming the teacher an earlier --from-scratch demo started in {out}")
        train(RunConfig.load(out / runs.CONFIG), out, resume=True)
        (out / TEACHER_DONE).write_text("")
    elif scratch:
        cfg = preset("lang-tiny", [f"data.source={corpus}", f"train.max_minutes={minutes}",
                                   *SCRATCH_SHAPE, f"train.max_steps={SCRATCH_STEPS_TEACHER[bool(fast)]}",
                                   "train.eval_every=300",
                                   "train.save_every=200", "train.snapshot_every=0", f"train.device={device}",
                                   f"data.cache_dir={out / 'cache'}", *fast])
        print(f"didi demo: training a tiny MDLM teacher for up to {minutes:g} minutes on {corpus} "
              f"({SCRATCH_TEXTS:,} texts of the built-in `{GRAMMAR}` grammar, one per row)")
        train(cfg, out)
        (out / TEACHER_DONE).write_text("")
    if not scratch:
        print(f"didi demo: the teacher is the finished `{GRAMMAR}` MDLM that ships with didi ({teacher})")
    if distill_minutes is None:
        distill_minutes = 3.5 if scratch else 8.0
    steps = latent_steps or (SCRATCH_STEPS_LATENT if scratch else SHIPPED_STEPS_LATENT)[bool(fast)]
    student = None  # (out/latent, not out/student: a directory from an older demo held a DiDi-Instruct student there)
    if distill_minutes > 0 or (out / "latent.done").is_file():
        student = _distill_stage(teacher, out, distill_minutes, steps, corpus, device, fast)
    _table(teacher, student, device, num)


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


def _distill_stage(teacher: Path, out: Path, minutes: float, steps: int, corpus: Path, device: str,
                   fast: list[str]) -> Path:
    """The recipe's latent stage and its exemplar prior (`didi.recipe.run_recipe`) into out/latent, on the
    latent-lang schedule shortened to the demo's minutes; a stopped stage resumes, a finished one is reused."""
    from .recipe import run_recipe

    reused = (out / "latent.done").is_file()
    if reused:
        print(f"didi demo: found a trained latent student in {out / 'latent'}; sampling from it (delete it and "
              f"{out / 'latent.done'} to train again)")
    else:
        print(f"\ndidi demo: training a few-step latent student from the teacher ({steps} steps, at most {minutes:g} "
              f"minutes) into {out / 'latent'}")
    return run_recipe(teacher, out, data=str(corpus), minutes=minutes, latent_steps=steps,
                      latent_overrides=["warmup_steps=40"],
                      overrides=["train.eval_every=0", "train.save_every=100", f"train.device={device}",
                                 f"data.cache_dir={out / 'cache'}", *fast], progress=not reused)


def _table(teacher: Path, student: Path | None, device: str, num: int) -> None:
    from .language import Grammar, Parser, score_texts

    grammar = Grammar.load(GRAMMAR)
    parser = Parser(grammar)
    rows = [("teacher", teacher, s) for s in DEMO_STEPS]
    if student is not None:
        rows += [("student", student, s) for s in STUDENT_STEPS]
    pipes, whole = {}, {}
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
        valid = [t for t in s.text if parser.parse_text(t) is not None]
        if valid and (label, steps) != ("teacher", DEMO_STEPS[-1]):
            whole.setdefault(label, (steps, valid[0]))
    for label, (steps, text) in whole.items():
        print(f"\nThe {label}'s first wholly valid text at {steps} steps:\n{text}")
    if "student" not in whole:
        s = pipes["teacher"].sample(num=1, steps=DEMO_STEPS[-1], seed=1).text[0]
        print(f"\nA teacher sample at {DEMO_STEPS[-1]} steps:\n{s}")


def pack_teacher(run: str | Path, dest: str | Path, command: str = "", overwrite: bool = False) -> Path:
    """Store the finished teacher run `run` as a teacher to ship in `dest` (the demo's is ASSET): its config (data
    paths made relative), tokenizer and sampling weights in bf16 (half the size; they are cast back to float32 on
    loading), and `teacher.json` saying where it came from (`command`, its steps and last validation NELBO). A `dest`
    that already holds weights is replaced only with overwrite=True."""
    import json
    import shutil

    import torch

    from . import fileio

    run, dest = runs.check_run_dir(run), Path(dest)
    if (dest / runs.WEIGHTS).exists() and not overwrite:
        raise DidiError(f"{dest} already holds a teacher; pass overwrite=True to replace it")
    cfg = fileio.read_json(run / runs.CONFIG)
    cfg["data"].update(source=Path(cfg["data"]["source"]).name, cache_dir="")
    cfg["train"]["device"] = "auto"
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
               for k, v in fileio.load_weights(run / runs.WEIGHTS).items()}
    evals = [m for m in fileio.read_metrics(run / "metrics.jsonl")[0] if "val_nelbo" in m]
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run / runs.TOKENIZER_DIR, dest / runs.TOKENIZER_DIR, dirs_exist_ok=True)
    fileio.atomic_write_text(dest / runs.CONFIG, json.dumps(cfg, indent=2) + "\n")
    fileio.save_weights(weights, dest / runs.WEIGHTS)
    info = {"command": command, "steps": evals[-1]["step"] if evals else None,
            "val_nelbo": evals[-1]["val_nelbo"] if evals else None, "dtype": "bfloat16"}
    fileio.atomic_write_text(dest / "teacher.json", json.dumps(info, indent=2) + "\n")
    return dest
