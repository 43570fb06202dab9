"""Validity against diversity for every distillation try on the reference language: each learning curve's
snapshots (bench/curve.py results) as a path, beside the fixed rows of the reference benchmark (teacher, SDTT) at
the same step counts. A try that buys validity with diversity moves up and to the left; the issue's target is the
top right (diversity within 5 % of the teacher at many steps).

Usage:
  python bench/tradeoff.py bench/results/reference_curve_didi-p3-*.json --reference bench/results/reference.json \
      [--steps 4,8] [--name reference_tradeoff] [--out bench/results]

Reads only result files (no sampling): seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py
from common import RESULTS, write_results  # noqa: E402


def curve_rows(paths: list[Path], steps: list[int]) -> list[dict]:
    rows = []
    for p in paths:
        name = p.stem.removeprefix("reference_curve_")
        for r in json.loads(p.read_text())["rows"]:
            if r["steps"] in steps:
                rows.append(dict(source=name, kind="curve", iteration=r["iteration"], steps=r["steps"],
                                 valid_sentences=r["valid_sentences"], choice_entropy_ratio=r["choice_entropy_ratio"]))
    return rows


def fixed_rows(path: Path, steps: list[int], models: list[str]) -> list[dict]:
    rows = []
    for r in json.loads(path.read_text())["rows"]:
        if r["model"] in models and r["sampler"] == "ancestral" and r.get("temperature", 1.0) == 1.0 \
                and r["steps"] in steps:
            rows.append(dict(source=r["model"], kind="reference", steps=r["steps"],
                             valid_sentences=r["valid_sentences"], choice_entropy_ratio=r["choice_entropy_ratio"]))
    return rows


def plot(rows: list[dict], steps: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(steps), figsize=(5.5 * len(steps), 4.6), squeeze=False)
    for ax, k in zip(axes[0], steps):
        for src in dict.fromkeys(r["source"] for r in rows if r["kind"] == "curve"):
            pts = sorted((r["iteration"], r["choice_entropy_ratio"], r["valid_sentences"]) for r in rows
                         if r["source"] == src and r["steps"] == k)
            line, = ax.plot([p[1] for p in pts], [p[2] for p in pts], "-", alpha=0.5, marker=".", label=src)
            ax.plot(pts[-1][1], pts[-1][2], "o", color=line.get_color())  # the last snapshot
        for r in rows:
            if r["kind"] == "reference" and r["steps"] == k:
                ax.plot(r["choice_entropy_ratio"], r["valid_sentences"], "k*", ms=10)
                ax.annotate(r["source"], (r["choice_entropy_ratio"], r["valid_sentences"]), fontsize=7,
                            xytext=(4, 2), textcoords="offset points")
        ax.axvline(0.95, color="gray", ls=":", lw=1)
        ax.set_xlabel("choice entropy / true (diversity)")
        ax.set_ylabel(f"valid sentences at {k} steps")
        ax.set_title(f"{k} steps (dots: a run's snapshots, o: its last)")
        ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curves", nargs="+", type=Path)
    ap.add_argument("--reference", type=Path, default=RESULTS / "reference.json")
    ap.add_argument("--models", default="teacher p3,sdtt,sdtt p3", help="rows of --reference to mark")
    ap.add_argument("--steps", default="4,8")
    ap.add_argument("--name", default="reference_tradeoff")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    rows = curve_rows(args.curves, steps) + fixed_rows(args.reference, steps, args.models.split(","))
    cols = ["source", "kind", "iteration", "steps", "valid_sentences", "choice_entropy_ratio"]
    notes = ("curve rows: a snapshot of a distillation run (256 samples, power-3 grid); reference rows: "
             f"{args.reference.name} at temperature 1 (512 samples).")
    write_results(args.name, rows, dict(curves=[str(p) for p in args.curves], reference=str(args.reference),
                                        steps=steps), cols, notes, args.out)
    plot(rows, steps, args.out / f"{args.name}.png")
    print(f"wrote {args.out / args.name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
