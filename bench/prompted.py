"""Prompted few-step generation on a reference language, judged exactly: every model of a comparison
(bench/reference.py) continues the first K sentences of held-out texts (`didi eval --prompts K`).

It reads the comparison's JSON (its stages: the teacher, the AR model, every student, and which students draw a code
from a prior) and samples, with one prompt per sample:
  - the teacher at 4, 8 and 256 steps; every student at 1, 2, 4 and 8; the AR model (KV cache);
  - the students with a code input (latent, and the recipe stages started from one) with the code inferred from the
    prompt (`--prompt-codes`, default exemplar: `didi.codes`) and, at 4 and 8 steps, drawn from their prior as if
    unprompted (prompt code "prior": what sampling did before).
Beside each model at 4 and 8 steps: its unprompted valid texts and choice entropy from the comparison (the same
models, judge and sampler), and whether it reaches its unprompted valid texts and the teacher's at 256 steps with the
same prompts, at choice entropy within 5 % of the teacher's completions.

Usage:
  python bench/prompted.py --comparison bench/results/compare_stories.json --num 1024
  python bench/prompted.py --comparison bench/results/compare_errands.json --num 1024
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import save_figure

import didi
from didi.evaluation.evaluate import RowCache, RowSpec, git_commit, run_rows, write_reports
from didi.language.prompts import PROMPT_SEED
from didi.prior import fingerprint

RESULTS = Path(__file__).resolve().parent / "results"
TOL = 0.05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comparison", required=True, help="a comparison's JSON (bench/reference.py)")
    ap.add_argument("--prompts", type=int, default=2, help="sentences of each prompt")
    ap.add_argument("--num", type=int, default=1024, help="prompts (= samples) per row")
    ap.add_argument("--seed", type=int, default=1, help="sampling seed")
    ap.add_argument("--student-steps", default="1,2,4,8")
    ap.add_argument("--teacher-steps", default="4,8,256")
    ap.add_argument("--prompt-codes", default="exemplar", help="how code students infer their code (comma-separated)")
    ap.add_argument("--only", default="", help="stages to sample (comma-separated; default every one)")
    ap.add_argument("--name", help="default: prompted_<grammar>")
    ap.add_argument("--work", help="row cache directory (default: the comparison's work directory)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    comp = json.loads(Path(args.comparison).read_text())
    grammar = comp["grammar"]["name"]
    name = args.name or f"prompted_{grammar}"
    stages = {k: v["path"] for k, v in comp["stages"].items()}
    only = set(args.only.split(",")) - {""}
    coded = set(comp.get("priors", {}))  # students that draw a code from their prior
    steps = [int(s) for s in args.student_steps.split(",")]
    codes = [c for c in args.prompt_codes.split(",") if c]
    k = args.prompts

    specs = [RowSpec("teacher", stages["teacher"], s, prompts=k) for s in map(int, args.teacher_steps.split(","))]
    specs.append(RowSpec("ar", stages["ar"], comp["settings"]["length"], "ar+kv", prompts=k))
    for stage, path in stages.items():
        if stage in ("teacher", "ar") or (only and stage not in only):
            continue
        if stage in coded:
            mark = fingerprint(path)
            specs += [RowSpec(f"{stage}+prior", path, s, prior=mark, grid_power=1.0, prompts=k, prompt_code=c)
                      for c in codes for s in steps]
            specs += [RowSpec(f"{stage}+prior", path, s, prior=mark, grid_power=1.0, prompts=k, prompt_code="prior")
                      for s in (4, 8)]
        else:
            specs += [RowSpec(stage, path, s, prompts=k) for s in steps]

    def load(run):
        return didi.load(run, noise_prior="run" if run in {stages[s] for s in coded} else "normal")

    work = Path(args.work or comp["settings"]["work"])
    cache = RowCache(work / f"{name}.rows.jsonl").load()
    rows = run_rows(specs, num=args.num, seed=args.seed, judge_name=comp["judge"], cache=cache,
                    samples_dir=work / "samples", load=load)
    table = summary(rows, comp["rows"])
    meta = {"judge": comp["judge"], "num": args.num, "seed": args.seed, "commit": git_commit(),
            "comparison": args.comparison, "prompts": {"sentences": k, "texts_seed": PROMPT_SEED},
            "settings": vars(args)}
    report = write_reports(rows, Path(args.out), name, meta, None)
    md = report["markdown"]
    md.write_text(md.read_text() + "\n" + summary_markdown(table, k) + "\n")
    plot_summary(table, Path(args.out) / f"{name}_summary.png", f"{grammar}: prompted with {k} sentences")
    print(md.read_text())


def summary(rows: list[dict], unprompted: list[dict]) -> list[dict]:
    """Per model (and prompt code) at 4 and 8 steps: prompted valid texts, valid sentences, agreement and choice
    entropy (over the teacher's at 256 steps with the same prompts), beside its unprompted valid texts at the same
    steps (temperature 1, uniform grid, ancestral) and the two bars."""
    top = max((r for r in rows if r["model"] == "teacher"), key=lambda r: r["steps"])
    plain = {(r["model"], r["steps"]): r for r in unprompted if r["sampler"] in ("ancestral", "ar+kv")
             and r["temperature"] == 1.0 and (r.get("grid_power") or 1.0) == 1}
    out = []
    for r in rows:
        if r["model"] != "ar" and r["steps"] not in (4, 8) and r is not top:
            continue
        u = plain.get((r["model"], r["steps"]))
        diversity = r["choice_entropy_ratio"] / top["choice_entropy_ratio"]
        out.append({"model": r["model"], "steps": r["steps"], "prompt_code": r.get("prompt_code", ""),
                    "valid_texts": r["valid_texts"], "valid_sentences": r["valid_sentences"],
                    "agreement": r["prompt_agreement"], "diversity": diversity,
                    "unprompted_valid_texts": u and u["valid_texts"],
                    "reaches_unprompted": u is not None and r["valid_texts"] >= u["valid_texts"],
                    "reaches_teacher": r["valid_texts"] >= top["valid_texts"], "diverse": abs(diversity - 1) <= TOL})
    return out


def summary_markdown(table: list[dict], k: int) -> str:
    lines = [f"## Prompted with {k} sentences, at 4 and 8 steps", "",
             "Diversity: the completions' choice entropy (against its true conditional law) over the teacher's at 256 "
             "steps with the same prompts. Unprompted: the same model's valid texts in the comparison. The bars: "
             "valid texts at least the unprompted ones, at least the teacher's at 256 steps (prompted), diversity "
             f"within {TOL:.0%}.", "",
             "| model | code | steps | valid texts | valid sentences | agreement | diversity | unprompted valid texts "
             "| >= unprompted | >= teacher 256 | diverse |", "|---" * 11 + "|"]
    yes = {True: "yes", False: "no"}
    for r in table:
        u = "" if r["unprompted_valid_texts"] is None else f"{r['unprompted_valid_texts']:.3f}"
        lines.append(f"| {r['model']} | {r['prompt_code']} | {r['steps']} | {r['valid_texts']:.3f} | "
                     f"{r['valid_sentences']:.3f} | {r['agreement']:.3f} | {r['diversity']:.3f} | {u} | "
                     f"{yes[r['reaches_unprompted']] if u else ''} | {yes[r['reaches_teacher']]} | "
                     f"{yes[r['diverse']]} |")
    return "\n".join(lines) + "\n"


def plot_summary(table: list[dict], path: Path, title: str) -> None:
    """Valid texts at 4 and 8 steps per model: prompted (bars) and unprompted (ticks)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = lambda r: r["model"] + (f" ({r['prompt_code']})" if r["prompt_code"] else "")  # noqa: E731
    models = list(dict.fromkeys(label(r) for r in table if r["model"] != "ar"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.4 * len(models) + 1.5), sharey=True)
    ar = next((r for r in table if r["model"] == "ar"), None)
    for ax, k in zip(axes, (4, 8)):
        by = {label(r): r for r in table if r["steps"] == k}
        ys = range(len(models))
        ax.barh(list(ys), [by[m]["valid_texts"] if m in by else 0 for m in models], 0.6, label="prompted")
        ax.scatter([(by.get(m) or {}).get("unprompted_valid_texts") or 0 for m in models], list(ys), marker="|",
                   s=200, color="k", label="unprompted")
        if ar is not None:
            ax.axvline(ar["valid_texts"], color="r", ls=":", lw=1, label="AR, prompted")
        ax.set_yticks(list(ys), models)
        ax.set_title(f"{k} steps")
        ax.set_xlabel("valid texts")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
