"""The reference log's bar from `didi eval` result files: for every student row, the share of the teacher's few-step
gap it closes, (student@k - teacher@k) / (teacher@best - teacher@k) in valid sentences, with teacher@k on the same
grid and at the same step count, and its choice entropy against the teacher's at the best step count. A row passes
when it closes at least --share of the gap and its choice entropy is within --tol of the teacher's. Each grid also
gets the condition that the language keeps the gap wide: the teacher at 4 steps below half its validity at best.

Usage:
  python bench/bar.py --teacher TEACHER.json --students S0.json S1.json ... --name bar_stories
  (TEACHER.json: one teacher run's rows, on one or more grids, at the few step counts and at --best or more steps;
  students are told apart by their run directory, so two seeds may share a directory name)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RESULTS, write_results

COLUMNS = ["model", "run", "grid_power", "steps", "valid_sentences", "teacher_same_steps", "teacher_best",
           "gap_closed", "choice_entropy_ratio", "diversity_vs_teacher_best", "passes", "num"]


def _rows(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"bar: no result file {path} (a `didi eval` result JSON)")
    return [r for r in json.loads(path.read_text())["rows"]
            if r.get("sampler", "ancestral") == "ancestral" and r.get("temperature", 1.0) == 1.0]


def _grid(r: dict) -> float:
    return float(r.get("grid_power") or 1.0)


def bar_rows(teacher: list[dict], students: list[dict], best_steps: int, share: float, tol: float):
    """Student rows with their gap closed and pass flag; per grid the teacher's reference and the gap condition;
    and the student rows left out (no teacher row on their grid and step count)."""
    if len({r.get("run", r["model"]) for r in teacher}) > 1:
        raise SystemExit("bar: the --teacher files hold rows of more than one run")
    teach = {}
    for r in teacher:
        if (_grid(r), r["steps"]) in teach:
            raise SystemExit(f"bar: two teacher rows at grid {_grid(r):g}, {r['steps']} steps")
        teach[_grid(r), r["steps"]] = r
    grids = {}
    for g in sorted({_grid(r) for r in teacher}):
        best = max((r for (gg, k), r in teach.items() if gg == g and k >= best_steps), key=lambda r: r["steps"],
                   default=None)
        four = teach.get((g, 4))
        grids[g] = {"best": best, "condition": None if best is None or four is None else
                    four["valid_sentences"] < 0.5 * best["valid_sentences"],
                    "teacher_4": four and four["valid_sentences"], "teacher_best": best and best["valid_sentences"],
                    "best_steps": best and best["steps"]}
    out, skipped = [], []
    for r in students:
        g, k = _grid(r), r["steps"]
        best, same = grids.get(g, {}).get("best"), teach.get((g, k))
        if best is None or same is None:
            skipped.append(f"{r['model']} at grid {g:g}, {k} steps")
            continue
        gap = best["valid_sentences"] - same["valid_sentences"]
        closed = (r["valid_sentences"] - same["valid_sentences"]) / gap if gap > 0 else None
        div = r["choice_entropy_ratio"] / best["choice_entropy_ratio"]
        out.append({"model": r["model"], "run": r.get("run", r["model"]), "grid_power": g, "steps": k,
                    "valid_sentences": r["valid_sentences"], "teacher_same_steps": same["valid_sentences"],
                    "teacher_best": best["valid_sentences"], "gap_closed": closed,
                    "choice_entropy_ratio": r["choice_entropy_ratio"], "diversity_vs_teacher_best": div,
                    "passes": closed is not None and closed >= share and div >= 1 - tol, "num": r.get("num")})
    return out, grids, skipped


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", nargs="+", required=True, help="didi eval result JSON(s) of the teacher")
    p.add_argument("--students", nargs="+", required=True, help="didi eval result JSONs of the students")
    p.add_argument("--best", type=int, default=128, help="the teacher's reference: its most steps at or above this")
    p.add_argument("--share", type=float, default=2 / 3, help="share of the gap a row must close")
    p.add_argument("--tol", type=float, default=0.05, help="choice entropy may fall this far below the teacher's")
    p.add_argument("--name", default="bar")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    teacher = [r for f in args.teacher for r in _rows(f)]
    students = [r for f in args.students for r in _rows(f)]
    rows, grids, skipped = bar_rows(teacher, students, args.best, args.share, args.tol)
    if skipped:
        print(f"bar: no teacher row on the grid and step count of: {'; '.join(skipped)}", file=sys.stderr)
    notes = []
    f3 = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for g, info in grids.items():
        runs = sorted({r["run"] for r in rows if r["grid_power"] == g})
        both = [run for run in runs if {4, 8} <= {r["steps"] for r in rows
                                                 if r["run"] == run and r["grid_power"] == g and r["passes"]}]
        cond = {None: "not measured (no 4-step or best row)", True: "holds", False: "FAILS"}[info["condition"]]
        notes.append(f"grid power {g:g}: the teacher at 4 steps {f3(info['teacher_4'])} against its "
                     f"{info['best_steps']}-step validity {f3(info['teacher_best'])}: "
                     f"gap condition (below half) {cond}; "
                     f"runs passing at 4 and 8 steps: {len(both)} of {len(runs)} ({', '.join(both) or 'none'})")
    kept = {str(g): {k: v for k, v in i.items() if k != "best"} for g, i in grids.items()}
    settings = {"teacher": args.teacher, "students": args.students, "best": args.best, "share": args.share,
                "tol": args.tol, "grids": kept, "skipped": skipped}
    path = write_results(args.name, rows, settings, COLUMNS, notes="\n\n".join(notes), out_dir=Path(args.out))
    print(path.read_text())


if __name__ == "__main__":
    main()
