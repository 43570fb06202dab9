"""The reference-language benchmark: teacher, AR, DiDi-Instruct and SDTT students on a grammar whose every
text has an exact probability, judged exactly (valid sentences and texts, NLL per word against the true entropy rate,
choice entropy against its true value). Stages and rows are cached under --work: a rerun skips what is finished and
resumes a half-trained stage exactly.

Stages (2 CPU cores; presets lang-tiny, lang, sdtt-lang):
  corpus      `didi language write GRAMMAR --num 50000 --seed 0`
  teacher     MDLM, preset lang-tiny (30 minutes, one text per row)
  ar          causal transformer of the same shape on the same rows and tokenizer (--ar-minutes)
  didi-sN     DiDi-Instruct student, preset lang, distillation seed N (--didi-minutes each)
  didi-pP-sN  the same on the sampler grid of power P (`diffusion.grid_power`, for each P > 1 in --grid-powers)
  paper-s0    DiDi-Instruct with the paper's defaults (preset tiny: 2-step tau rollouts, final-state reward)
  sdtt        SDTT student, preset sdtt-lang (128 -> 4 steps), the same wall-clock as one DiDi student
  latent-sN   the recipe's latent student (preset latent-lang, seed N), then its exemplar prior (`didi prior
              --components 0`)
  recipe-sN   the recipe's DiDi student: preset lang-stage from latent-sN (rollouts from its prior); sampled from
              that prior (rows "recipe-sN+prior")
  dmmd-sN     D-MMD student from the teacher, preset dmmd-lang, seed N (--dmmd-minutes each)
  dmmd-recipe-sN  D-MMD (preset dmmd-lang) from latent-sN in place of the recipe's DiDi stage (rows
              "dmmd-recipe-sN+prior", codes from latent-sN's prior)
Rows (--num samples each, float64 draws, sampling seed --seed): teacher at 1 ... 256 steps (on each grid power:
model "teacher pP"), every student at 1 ... 16 steps (SDTT also on each grid power), RGAS for the first DiDi
seed, AR with a KV cache, and a temperature sweep of the teacher at 4, 8 and 128 steps and of the students at 4 and
8 (the validity / diversity frontier; the recipe students are not in it). The recipe students (rows
"recipe-sN+prior", drawing their code from their prior) at 1 ... 16 steps on the uniform grid and at 4 and 8 on their
training grid (3) and each --grid-powers. Learning curves of each DiDi student (validity at 4 and 8 steps against
iteration, beside discriminator accuracy and reward) go to curve_<stage>.*.

Usage:
  python bench/reference.py                               # stories, everything, into runs/reference + bench/results
  python bench/reference.py --grammar errands --work runs/reference-errands --length 80 --name reference_errands
  python bench/reference.py --teacher runs/teacher --stage sdtt=runs/sdtt --stage latent-s0=runs/lat0 \
      --stage recipe-s0=runs/didi0 ...             # finished runs as stages; the others are built
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from common import floats, ints, save_figure, stage, stage_facts, stage_markdown

import didi
from didi.config import RunConfig, preset
from didi.distill import PRESET_RUN_OVERRIDES, distill, distill_preset
from didi.evaluation.evaluate import RowCache, RowSpec, git_commit, run_rows, write_reports
from didi.language import Grammar, write_corpus
from didi.prior import fingerprint, load_prior, write_prior
from didi.runs import CONFIG

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grammar", default="stories", help="a built-in grammar name or a .grammar file")
    ap.add_argument("--work", default=str(ROOT / "runs" / "reference"))
    ap.add_argument("--texts", type=int, default=50_000, help="corpus size")
    ap.add_argument("--data", help="the teacher's corpus (a .jsonl file) instead of writing one into --work")
    ap.add_argument("--length", type=int, default=48, help="model.length (every text must fit)")
    for name in ("teacher", "ar"):
        ap.add_argument(f"--{name}", help=f"use this finished run as the {name} stage")
    ap.add_argument("--stage", action="append", default=[], metavar="NAME=RUN",
                    help="use this finished run as stage NAME (sdtt, didi-s0, latent-s0, recipe-s0, ...); repeatable")
    ap.add_argument("--teacher-minutes", type=float, default=30.0)
    ap.add_argument("--ar-minutes", type=float, default=10.0)
    ap.add_argument("--didi-minutes", type=float, default=25.0)
    ap.add_argument("--seeds", default="0,1", help="distillation seeds of the DiDi student")
    ap.add_argument("--uniform-seeds", help="seeds of the uniform-grid DiDi student (default: --seeds)")
    ap.add_argument("--grid-powers", default="1", help="sampler grid powers (1 = uniform); each P > 1 adds teacher "
                                                        "rows and DiDi students on that grid")
    ap.add_argument("--no-paper", action="store_true", help="skip the paper-defaults student")
    ap.add_argument("--no-sdtt", action="store_true")
    ap.add_argument("--no-recipe", action="store_true", help="skip the latent + prior + lang-stage students")
    ap.add_argument("--no-dmmd", action="store_true", help="skip the D-MMD students")
    ap.add_argument("--skip", default="", help="stages neither built nor sampled, by name (e.g. ar,paper-s1,recipe-s1)")
    ap.add_argument("--until", action="append", default=[], metavar="NAME=STEP",
                    help="stop stage NAME at iteration STEP, its schedule unchanged (to repeat on a faster machine "
                    "the iterations a wall-clock cap gave on a slower one)")
    ap.add_argument("--sdtt-steps", type=int, help="SDTT's schedule length (distill.max_steps; its rounds split it), "
                    "sized so that the rounds fill the wall-clock (default: preset sdtt-lang's)")
    ap.add_argument("--didi-steps", type=int, help="the DiDi students' schedule length (distill.max_steps), sized so "
                    "that it ends with --didi-minutes (default: preset lang's)")
    ap.add_argument("--paper-steps", type=int, help="the same for the paper-defaults student (default: preset tiny's)")
    ap.add_argument("--dmmd-minutes", type=float, default=25.0, help="cap of each D-MMD student")
    ap.add_argument("--no-compile", action="store_true", help="train the recipe's latent students uncompiled "
                    "(train.compile needs a C++ compiler; compiled is 1.19x faster, reference log E59)")
    ap.add_argument("--latent-minutes", type=float, default=25.0, help="cap of each recipe latent student")
    ap.add_argument("--latent-steps", type=int, help="the latent students' schedule length (distill.max_steps), "
                    "sized so that it ends with --latent-minutes (default: preset latent-lang's)")
    ap.add_argument("--stage-minutes", type=float, default=8.0, help="cap of each recipe DiDi stage")
    ap.add_argument("--no-cpu-bf16", action="store_true",
                    help="every distillation stage in float32 (default: bf16 autocast, 1.8-2.1x faster on "
                         "AVX512-BF16 cores; the 20-minute comparison of 2026-12 ran DiDi and SDTT in float32)")
    ap.add_argument("--teacher-steps", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--student-steps", default="1,2,4,8,16")
    ap.add_argument("--temperatures", default="0.8,1.3", help="extra temperatures of the validity / diversity "
                    "frontier (above 1 restores the diversity a student lost)")
    ap.add_argument("--teacher-temperature-steps", default="4,8,128", help="the teacher's steps in that sweep")
    ap.add_argument("--no-rgas", action="store_true", help="no guided-sampling rows")
    ap.add_argument("--no-own-grid", action="store_true", help="the recipe students on the uniform grid (and each "
                    "--grid-powers) only, not also on their training grid")
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="reference")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    given = given_stages(args.stage) | {k: Path(v) for k in ("teacher", "ar") if (v := getattr(args, k))}
    until = given_stages(args.until, steps=True)

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    grammar = Grammar.load(args.grammar)
    judge = f"grammar:{args.grammar}"
    corpus = Path(args.data).resolve() if args.data else work / "corpus.jsonl"
    if not corpus.is_file():
        write_corpus(grammar, args.texts, 0, corpus)
    base = [f"data.source={corpus}", f"model.length={args.length}", "data.long_sequences=skip"]

    skip = set(args.skip.split(",")) - {""}

    def build_stage(name: str, build) -> Path | None:  # the user's run (--teacher, --ar, --stage), or one built now
        return None if name in skip else stage(work, name, given.get(name),
                                               lambda o, resume: build(o, resume, until.get(name)))

    teacher = build_stage("teacher", lambda o, resume, until: didi.train(
        preset("lang-tiny", base + [f"train.max_minutes={args.teacher_minutes}"]), o, resume=resume,
        until_step=until))
    ar = build_stage("ar", lambda o, resume, until: didi.train(
        preset("lang-tiny", base + [f"data.tokenizer={teacher / 'tokenizer'}", "model.arch=ar",
                                    f"train.max_minutes={args.ar_minutes}", "train.snapshot_every=0",
                                    f"train.cpu_bf16={str(not args.no_cpu_bf16).lower()}"]),
        o, resume=resume, until_step=until))

    def student(dpreset: str, seed: int, snapshots: bool, power: float = 1.0, steps: int | None = None):
        over = [f"data.source={corpus}", f"train.max_minutes={args.didi_minutes}", f"train.seed={seed}",
                f"diffusion.grid_power={power:g}", f"train.cpu_bf16={str(not args.no_cpu_bf16).lower()}"]
        over += ["train.snapshot_every=100"] if snapshots else []
        dover = [f"max_steps={steps}"] if steps else []
        return lambda o, resume, until: distill(None if resume else teacher, o,
                                         None if resume else distill_preset(dpreset, dover), overrides=over,
                                         resume=resume, until_step=until)

    useeds = ints(args.uniform_seeds if args.uniform_seeds is not None else args.seeds)
    students = {f"didi-s{s}": build_stage(f"didi-s{s}", student("lang", s, True, steps=args.didi_steps))
                for s in useeds}
    powers = [p for p in floats(args.grid_powers) if p != 1.0]
    for p in powers:
        for s in ints(args.seeds):
            students[f"didi-p{p:g}-s{s}"] = build_stage(f"didi-p{p:g}-s{s}", student("lang", s, True, p))
    for s in ints(args.seeds):  # the paper's defaults and SDTT on the same seeds and wall-clock as the DiDi student
        if not args.no_paper:
            students[f"paper-s{s}"] = build_stage(f"paper-s{s}", student("tiny", s, True, steps=args.paper_steps))
        if not args.no_sdtt:
            students[f"sdtt-s{s}"] = build_stage(f"sdtt-s{s}", student("sdtt-lang", s, True, steps=args.sdtt_steps))
    recipe, latents = {}, {}
    for s in [] if args.no_recipe else ints(args.seeds):
        latents[f"latent-s{s}"], recipe[f"recipe-s{s}"] = recipe_student(build_stage, teacher, s, corpus, args)
    for s in [] if args.no_dmmd else ints(args.seeds):
        common = [f"data.source={corpus}", f"train.seed={s}", "train.snapshot_every=100",
                  f"train.cpu_bf16={str(not args.no_cpu_bf16).lower()}"]
        over = common + [f"train.max_minutes={args.dmmd_minutes}"]
        students[f"dmmd-s{s}"] = build_stage(f"dmmd-s{s}", lambda o, resume, until, over=over: distill(
            None if resume else teacher, o, None if resume else distill_preset("dmmd-lang"), overrides=over,
            resume=resume, until_step=until))
        if latents.get(f"latent-s{s}") is not None:
            dcfg = distill_preset("dmmd-lang", [f"student_init={latents[f'latent-s{s}']}"])
            over = common + [f"train.max_minutes={args.stage_minutes}"]  # in place of the DiDi stage, its time
            recipe[f"dmmd-recipe-s{s}"] = build_stage(
                f"dmmd-recipe-s{s}", lambda o, resume, until, over=over, dcfg=dcfg: distill(
                    None if resume else teacher, o, None if resume else dcfg, overrides=over, resume=resume,
                    until_step=until))
    students, latents, recipe = ({k: v for k, v in d.items() if v is not None} for d in (students, latents, recipe))
    paths = {"teacher": teacher, **({"ar": ar} if ar else {}), **students, **latents, **recipe}

    T = str(teacher)
    first = f"didi-s{useeds[0]}"
    specs = [RowSpec("teacher", T, s) for s in ints(args.teacher_steps)]
    specs += [RowSpec(f"teacher p{p:g}", T, s, grid_power=p) for p in powers for s in ints(args.teacher_steps)]
    for name, path in students.items():
        specs += [RowSpec(name, str(path), s) for s in ints(args.student_steps)]
    specs += [RowSpec(f"{name} p{p:g}", str(path), s, grid_power=p) for name, path in students.items()
              if name.startswith("sdtt") for p in powers for s in ints(args.student_steps)]
    # the recipe's students draw their code from the prior they trained with (RowSpec.prior keys the cache); they
    # train on the power-3 grid and are sampled on the uniform grid like the teacher's rows, and at 4 and 8 steps on
    # their own grid and each --grid-powers (model "recipe-sN+prior pP")
    with_prior = latents | recipe  # the latent student alone is the recipe at one method's wall-clock
    specs += [RowSpec(f"{name}+prior", str(path), s, prior=fingerprint(path), grid_power=1.0)
              for name, path in with_prior.items() for s in ints(args.student_steps)]
    specs += [RowSpec(f"{name}+prior p{p:g}", str(path), s, prior=fingerprint(path), grid_power=p)
              for name, path in recipe.items()
              for p in sorted(set(powers) | (set() if args.no_own_grid else {own_grid(path)})) for s in (4, 8)]
    specs += [RowSpec("ar", str(ar), args.length, "ar+kv")] if ar else []  # --skip ar: no AR rows
    specs += [] if args.no_rgas else [RowSpec(first, str(students[first]), s, "RGAS") for s in (4, 8)]
    for t in floats(args.temperatures):
        specs += [RowSpec("teacher", T, s, temperature=t) for s in ints(args.teacher_temperature_steps)]
        specs += [RowSpec(f"teacher p{p:g}", T, s, temperature=t, grid_power=p) for p in powers for s in (4, 8)]
        specs += [RowSpec(name, str(path), s, temperature=t) for name, path in students.items() for s in (4, 8)]
        specs += [RowSpec(f"{name}+prior", str(path), s, temperature=t, prior=fingerprint(path), grid_power=1.0)
                  for name, path in with_prior.items() for s in (4, 8)]

    cache = RowCache(work / f"{args.name}.rows.jsonl").load()
    meta = {"judge": judge, "num": args.num, "seed": args.seed, "commit": git_commit(),
            "grammar": grammar.describe(), "settings": vars(args) | {k: str(v) for k, v in paths.items()},
            "stages": stage_facts(paths),
            "priors": {name: load_prior(path).info | {"fingerprint": fingerprint(path)}
                       for name, path in with_prior.items()}}
    prior_runs = {str(path) for path in with_prior.values()}

    def load(run):
        return didi.load(run, noise_prior="run" if run in prior_runs else "normal")

    rows = run_rows(specs, num=args.num, seed=args.seed, judge_name=judge, cache=cache, samples_dir=work / "samples",
                    load=load)
    best = max((r for r in rows if r["model"] == "teacher" and r["temperature"] == 1.0 and r["steps"] >= 128
                and r["sampler"] == "ancestral"),
               key=lambda r: r["steps"])
    report = write_reports(rows, out, args.name, meta, best["choice_entropy_ratio"])
    md = report["markdown"]
    table = comparison(rows, best)
    plot_comparison(table, out / f"{args.name}_comparison.png", args.name)
    md.write_text(md.read_text() + "\n" + comparison_markdown(table, best, meta["stages"]) + "\n"
                  + gap_markdown(rows, best) + "\n" + stage_markdown(meta["stages"]))

    for name, path in students.items():  # learning curves of the students that kept snapshots
        if (path / "snapshots").is_dir():
            subprocess.run([sys.executable, str(Path(__file__).with_name("curve.py")), str(path), "--judge", judge,
                            "--teacher", T, "--out", str(out), "--name", f"{args.name}_curve_{name}"], check=True)
    for name, path in recipe.items():  # the DiDi stage's curve on its own grid; iteration 0 is its latent student
        subprocess.run([sys.executable, str(Path(__file__).with_name("curve.py")), str(path), "--judge", judge,
                        "--teacher", str(latents["latent-s" + name.rsplit("-s", 1)[1]]), "--grid-power",
                        f"{own_grid(path):g}", "--out", str(out),
                        "--name", f"{args.name}_curve_{name}"], check=True)
    print(md.read_text())


def given_stages(items: list[str], steps: bool = False) -> dict[str, Path | int]:
    """`--stage NAME=RUN` -> {NAME: RUN}: finished run directories used as those stages instead of building them.
    With `steps`, `--until NAME=STEP` -> {NAME: STEP}."""
    given = {}
    for item in items:
        name, sep, run = item.partition("=")
        flag, what = ("--until", "STEP") if steps else ("--stage", "RUN")
        if not (sep and name and run) or (steps and not (run.isdigit() and int(run) > 0)):
            raise SystemExit(f"bench: {flag} wants NAME={what}, got {item!r}")
        if steps:
            given[name] = int(run)
            continue
        if not (Path(run) / "config.json").is_file():
            raise SystemExit(f"bench: --stage {name}: {run} is not a finished run directory (no config.json)")
        given[name] = Path(run)
    return given


def own_grid(run: Path) -> float:
    """The sampling grid a run was trained on (lang-stage: 3), saved in its config."""
    return RunConfig.load(run / CONFIG).diffusion.grid_power


def recipe_student(build_stage, teacher: Path, seed: int, corpus: Path, args) -> tuple[Path, Path]:
    """The reference-language recipe on one seed: a latent-lang student, its exemplar prior (`didi prior
    --components 0`), then the lang-stage DiDi run from it. Returns both run directories."""
    common = [f"data.source={corpus}", f"train.cpu_bf16={str(not args.no_cpu_bf16).lower()}", f"train.seed={seed}"]
    steps = [f"max_steps={args.latent_steps}"] if args.latent_steps else []
    latent = build_stage(f"latent-s{seed}", lambda o, resume, until: distill(
        None if resume else teacher, o, None if resume else distill_preset("latent-lang", steps),
        overrides=common + [f"train.max_minutes={args.latent_minutes}",
                            f"train.compile={str(not args.no_compile).lower()}"], resume=resume,
        until_step=until))
    if latent is None:
        return None, None
    prior = load_prior(latent) or write_prior(latent, 0)
    if prior.info.get("components") != 0:
        raise SystemExit(f"bench: {latent} holds a prior that is not the recipe's exemplar prior ({prior.info}); "
                         "remove its noise_prior.safetensors")
    over = PRESET_RUN_OVERRIDES["lang-stage"] + common + [f"train.max_minutes={args.stage_minutes}"]
    dcfg = distill_preset("lang-stage", [f"student_init={latent}"])
    return latent, build_stage(f"recipe-s{seed}", lambda o, resume, until: distill(
        None if resume else teacher, o, None if resume else dcfg, overrides=over, resume=resume, until_step=until))


def comparison(rows: list[dict], best: dict, tol: float = 0.05) -> list[dict]:
    """One line per model and step count (4 and 8, uniform grid, ancestral): valid sentences, the share of the
    teacher's few-step gap closed, valid texts and choice entropy against the teacher's best at temperature 1; and
    at the teacher's diversity, the best of its temperature rows whose choice entropy is within `tol` of the
    teacher's best (None when no temperature reaches it)."""
    grid = lambda r: r.get("grid_power") or 1.0  # noqa: E731
    plain = [r for r in rows if r["sampler"] == "ancestral" and grid(r) == 1.0 and r["steps"] in (4, 8)]
    teach = {r["steps"]: r["valid_sentences"] for r in plain if r["model"] == "teacher" and r["temperature"] == 1.0}
    target = best["choice_entropy_ratio"]
    out = []
    for model in dict.fromkeys(r["model"] for r in plain):
        for k in (4, 8):
            mine = [r for r in plain if r["model"] == model and r["steps"] == k]
            at1 = next((r for r in mine if r["temperature"] == 1.0), None)
            if at1 is None or k not in teach:
                continue
            base, gap = teach[k], best["valid_sentences"] - teach[k]

            def closed(v, base=base, gap=gap):
                return (v - base) / gap if gap > 0 else float("nan")
            matched = [r for r in mine if abs(r["choice_entropy_ratio"] / target - 1) <= tol]
            m = max(matched, key=lambda r: r["valid_sentences"], default=None)
            out.append({"model": model, "steps": k, "valid_sentences": at1["valid_sentences"],
                        "gap_closed": closed(at1["valid_sentences"]), "valid_texts": at1["valid_texts"],
                        "diversity": at1["choice_entropy_ratio"] / target,
                        "temperatures": sorted(r["temperature"] for r in mine),
                        "matched_temperature": m and m["temperature"],
                        "matched_valid_sentences": m and m["valid_sentences"],
                        "matched_gap_closed": m and closed(m["valid_sentences"]),
                        "matched_valid_texts": m and m["valid_texts"],
                        "matched_diversity": m and m["choice_entropy_ratio"] / target})
    return out


def comparison_markdown(table: list[dict], best: dict, stages: dict) -> str:
    lines = [f"## Comparison at 4 and 8 steps (uniform grid; the teacher at {best['steps']} steps: "
             f"{best['valid_sentences']:.3f} valid sentences, choice entropy {best['choice_entropy_ratio']:.3f})", "",
             "Gap closed: (model - teacher at the same steps) / (teacher at its best - teacher at the same steps), in "
             "valid sentences. Diversity: choice entropy / the teacher's at its best. 'At the teacher's diversity': "
             "the model's best temperature row with diversity within 5 %; blank when none of its temperatures gets "
             "there.", "",
             "| model | trained (steps, minutes) | steps | valid sentences | gap closed | valid texts | diversity | "
             "at the teacher's diversity: temperature | valid sentences | gap closed | valid texts |",
             "|---" * 11 + "|"]
    for r in table:
        st = stages.get(r["model"].split("+")[0], {})
        trained = f"{st.get('steps')}, {st.get('minutes')}" if st else ""
        m = ("| — | — | — | — |" if r["matched_temperature"] is None else
             f"| {r['matched_temperature']:g} | {r['matched_valid_sentences']:.3f} | {r['matched_gap_closed']:+.2f} | "
             f"{r['matched_valid_texts']:.3f} |")
        lines.append(f"| {r['model']} | {trained} | {r['steps']} | {r['valid_sentences']:.3f} | "
                     f"{r['gap_closed']:+.2f} | {r['valid_texts']:.3f} | {r['diversity']:.3f} " + m)
    return "\n".join(lines) + "\n"


def plot_comparison(table: list[dict], path: Path, title: str) -> None:
    """Gap closed per model at 4 and 8 steps: at temperature 1 (solid) and at the teacher's diversity (hatched)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in table if r["model"] != "teacher"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(models) + 1.5), sharey=True)
    for ax, k in zip(axes, (4, 8)):
        by = {r["model"]: r for r in table if r["steps"] == k}
        ys = range(len(models))
        ax.barh([y + 0.2 for y in ys], [by[m]["gap_closed"] if m in by else 0 for m in models], 0.4,
                label="temperature 1")
        ax.barh([y - 0.2 for y in ys], [(by.get(m) or {}).get("matched_gap_closed") or 0 for m in models], 0.4,
                hatch="//", fill=False, label="at the teacher's diversity (0 = never)")
        ax.axvline(2 / 3, color="k", ls=":", lw=1)
        ax.set_yticks(list(ys), models)
        ax.set_title(f"{k} steps")
        ax.set_xlabel("share of the teacher's few-step gap closed (valid sentences)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def gap_markdown(rows: list[dict], best: dict) -> str:
    """Share of the teacher's few-step gap each student closes, (student - teacher@k) / (teacher@best - teacher@k),
    against the teacher on the uniform grid and against the teacher on the student's own grid."""
    grid = lambda r: r.get("grid_power") or 1.0  # noqa: E731 (rows cached before grids were recorded: uniform)
    teach = {(grid(r), r["steps"]): r for r in rows
             if r["model"].startswith("teacher") and r["temperature"] == 1.0 and r["sampler"] == "ancestral"}
    lines = [f"## Gap closed (valid sentences; the teacher at {best['steps']} steps = "
             f"{best['valid_sentences']:.3f}, choice entropy {best['choice_entropy_ratio']:.3f})", "",
             "| model | steps | grid | valid_sentences | teacher, uniform grid | gap closed | teacher, same grid | "
             "gap closed | choice_entropy_ratio | diversity vs teacher best |", "|---" * 10 + "|"]

    def closed(v, base):
        gap = best["valid_sentences"] - base
        return (v - base) / gap if gap > 0 else float("nan")

    for r in rows:
        if r["model"].startswith("teacher") or r["sampler"] != "ancestral" or r["temperature"] != 1.0:
            continue
        g, k = grid(r), r["steps"]
        if (1.0, k) not in teach:
            continue
        u, same = teach[(1.0, k)]["valid_sentences"], teach.get((g, k), {}).get("valid_sentences", float("nan"))
        div = r["choice_entropy_ratio"] / best["choice_entropy_ratio"]
        v = r["valid_sentences"]
        lines.append(f"| {r['model']} | {k} | {g:g} | {v:.3f} | {u:.3f} | {closed(v, u):+.2f} | {same:.3f} | "
                     f"{closed(v, same):+.2f} | {r['choice_entropy_ratio']:.3f} | {div:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
