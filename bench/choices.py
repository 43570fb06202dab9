"""Which choices of the grammar a sampler keeps or loses: the entropy of every choice point (each rule's
alternatives, each variable's value, the kind of sentence) in the valid sentences of each run's samples, beside its
true value. A student that gains validity by always writing the same template shows it here.

Usage: python bench/choices.py LABEL=RUN [LABEL=RUN ...] --grammar stories --steps 8 [--num 512] [--grid-power 3]
           [--name reference_choices]
"""

from __future__ import annotations

import argparse

from common import write_results

import didi
from didi.language import Grammar
from didi.language.metrics import score_texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    ap.add_argument("--grammar", default="stories")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid-power", type=float, default=None, help="default: each run's own")
    ap.add_argument("--name", default="reference_choices")
    args = ap.parse_args()
    grammar = Grammar.load(args.grammar)
    scores = {}
    for item in args.runs:
        label, _, path = item.partition("=")
        out = didi.load(path).sample(num=args.num, steps=args.steps, seed=args.seed, batch_size=128,
                                     grid_power=args.grid_power)
        scores[label] = score_texts(grammar, out.text, per_choice=True)
    labels = list(scores)
    truth = {c: v["entropy_true"] for s in scores.values() for c, v in s["choices"].items()}
    rows = [{"choice": "(all) valid sentences", **{lab: scores[lab]["valid_sentences"] for lab in labels}},
            {"choice": "(all) choice entropy ratio", **{lab: scores[lab]["choice_entropy_ratio"] for lab in labels}}]
    for c in sorted(truth, key=lambda c: -truth[c]):
        row = {"choice": c, "true": truth[c]}
        for lab in labels:
            v = scores[lab]["choices"].get(c)
            row[lab] = v["entropy_seen"] if v else None
            row[f"{lab} n"] = v["observations"] if v else 0
        rows.append(row)
    columns = ["choice", "true"] + [x for lab in labels for x in (lab, f"{lab} n")]
    note = (f"{args.num} samples per run at {args.steps} steps (grid power: "
            f"{args.grid_power if args.grid_power is not None else 'each run its own'}, seed {args.seed}), judged by "
            f"the {args.grammar} grammar. Entropy in nats of each choice among the valid sentences (Miller-Madow "
            "corrected); `n`: how many valid sentences made that choice. Runs: "
            + ", ".join(args.runs) + ".")
    path = write_results(args.name, rows, vars(args), columns, note)
    print(path.read_text())


if __name__ == "__main__":
    main()
