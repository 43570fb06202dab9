"""How new are a model's texts? Each sample's nearest training text, by word-sequence similarity.

A prior drawn from the codes of training texts (`didi prior --components 0`) can decode texts close to those
texts; choice entropy and distinct texts do not show that, since copies of varied training texts are varied.
This measures it against the level of fresh texts of the same language: the run's held-out texts (never trained
on) give the similarity an independent draw has to its nearest training text.

Per sample file (the `samples/*.pt` token ids that `didi eval` writes, decoded with the run's tokenizer):
- exact_copy: the share of its texts that are a training text verbatim;
- nearest_similarity: the mean, over the first `--num` texts, of the highest difflib word-sequence ratio to any
  training text (candidates: the `--candidates` training texts sharing most word 3-grams with it; 0 when none
  shares one, so it is a lower bound for texts unlike the language);
- near_copy: the share of those with nearest similarity >= 0.9.

Usage:
  python bench/novelty.py RUN SAMPLES.pt [SAMPLES.pt ...] [--num 256] [--name novelty_X]
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch

from didi import runs
from didi.api import Pipeline
from didi.data import prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py
from common import RESULTS, write_results  # noqa: E402

COLUMNS = ["texts", "exact_copy", "nearest_similarity", "near_copy", "num"]


def read_samples(path: Path, pipe) -> list[str]:
    return pipe.decode(torch.load(path).long())


def trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


class Nearest:
    """Nearest training text by difflib ratio over word lists, searched among the texts sharing most 3-grams."""

    def __init__(self, train: list[str], candidates: int):
        self.words = [t.split() for t in train]
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, w in enumerate(self.words):
            for g in trigrams(w):
                self.index[g].append(i)
        self.candidates = candidates

    def similarity(self, text: str) -> float:
        words = text.split()
        hits = Counter()
        for g in trigrams(words):
            hits.update(self.index.get(g, ()))
        best = 0.0
        for i, _ in hits.most_common(self.candidates):
            best = max(best, difflib.SequenceMatcher(None, words, self.words[i], autojunk=False).ratio())
        return best


def score(texts: list[str], seen: set[str], nearest: Nearest, num: int) -> dict:
    sims = [nearest.similarity(t) for t in texts[:num]]
    return {"exact_copy": sum(t in seen for t in texts) / len(texts), "nearest_similarity": sum(sims) / len(sims),
            "near_copy": sum(s >= 0.9 for s in sims) / len(sims), "num": len(sims)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the run whose training data is the reference (a student's: its teacher's data)")
    ap.add_argument("samples", nargs="+", help="sample files written by didi eval (samples/*.pt)")
    ap.add_argument("--num", type=int, default=256, help="texts per file searched for their nearest training text")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--name", default="novelty")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    run = runs.load_run(Path(args.run), "cpu")
    pipe = Pipeline(run)
    train, valid = prepare_data(run.config.data, pipe.tokenizer, run.config.model.length, show_progress=False)
    train_texts = pipe.decode(train.get(torch.arange(len(train))))
    seen = set(train_texts)
    nearest = Nearest(train_texts, args.candidates)
    held = pipe.decode(valid.get(torch.arange(min(len(valid), 2048))))
    rows = [{"texts": "held-out data (never trained on)", **score(held, seen, nearest, args.num)}]
    for path in args.samples:
        rows.append({"texts": Path(path).stem, **score(read_samples(Path(path), pipe), seen, nearest, args.num)})
        print(rows[-1], flush=True)
    settings = {"run": args.run, "training_texts": len(train_texts), "candidates": args.candidates}
    notes = ("Nearest training text of each text by difflib word-sequence ratio (1 = the same words in order); the "
             "held-out row is the level of fresh texts of the language.")
    path = write_results(args.name, rows, settings, COLUMNS, notes, Path(args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
