"""Exact judging of generated texts against a reference grammar: validity, likelihood and diversity.

- valid_sentences: share of sentences derivable from a sentence rule (an empty text counts as one
  invalid sentence); valid_texts: share of texts derivable from the start rule.
- nll_per_word: -log p(text) per word over the valid texts, beside the grammar's true entropy rate
  (`entropy_rate`): a sampler that matches the grammar has nll_per_word ~ entropy_rate; a lower value
  means the samples prefer likely texts (a lower temperature, mode seeking).
- distinct_texts: share of distinct texts among all samples.
- choice entropy: for every choice point the grammar makes (each rule's alternatives, each variable's
  value, the kind of sentence) the entropy of the choices seen in the valid sentences (Miller-Madow
  corrected) against the true entropy of that choice; `choice_entropy_ratio` sums both over all
  observations (sum_c n_c H_seen(c) / sum_c n_c H_true(c)): 1 for samples of the grammar, lower when
  samples collapse onto fewer choices.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from .grammar import Grammar, entropy
from .parse import Parser


def miller_madow(counts: Counter) -> float:
    n = sum(counts.values())
    if n == 0:
        return 0.0
    return entropy(c / n for c in counts.values()) + (len(counts) - 1) / (2 * n)


def choice_entropy(seen: dict[str, Counter], truth: dict[str, list[float]]) -> tuple[dict, float]:
    """Per choice point: observations, seen entropy (Miller-Madow) and true entropy; and their ratio summed over
    the observations, sum_c n_c H_seen(c) / sum_c n_c H_true(c) (nan when nothing has entropy)."""
    choices = {c: {"observations": sum(cnt.values()), "entropy_seen": miller_madow(cnt),
                   "entropy_true": entropy(truth[c])} for c, cnt in sorted(seen.items())}
    num = sum(v["observations"] * v["entropy_seen"] for v in choices.values())
    den = sum(v["observations"] * v["entropy_true"] for v in choices.values())
    return choices, num / den if den > 0 else float("nan")


def score_texts(grammar: Grammar, texts: list[str], parser: Parser | None = None, per_choice: bool = False) -> dict:
    """Judge `texts` against `grammar` (see the module docstring). per_choice adds the table of every choice."""
    parser = parser or Parser(grammar)
    truth = grammar.choice_distributions()
    seen: dict[str, Counter] = defaultdict(Counter)
    n_sent = n_valid_sent = n_valid_text = 0
    nll = words = 0.0
    for text in texts:
        parsed = parser.parse_text(text)
        if parsed is not None:
            n_valid_text += 1
            nll -= parsed.logp
            words += parsed.words
        sentences = parser.sentences(text)
        if not sentences:
            n_sent += 1  # an empty text is one invalid sentence
        for _, sp in sentences:
            n_sent += 1
            if sp is None:
                continue
            n_valid_sent += 1
            seen["sentence"][grammar.sentence_rules.index(sp.rule)] += 1
            for point, outcome in sp.trace:
                if point in truth:
                    seen[point][outcome] += 1
    n = max(len(texts), 1)
    choices, ratio = choice_entropy(seen, truth)
    out = {
        "valid_sentences": n_valid_sent / max(n_sent, 1),
        "valid_texts": n_valid_text / n,
        "sentences_per_text": n_sent / n,
        "nll_per_word": nll / words if words else float("nan"),
        "entropy_rate": grammar.entropy_rate,
        "distinct_texts": len(set(texts)) / n,
        "choice_entropy_ratio": ratio,
    }
    if per_choice:
        out["choices"] = choices
    return out


def nll_ratio(scores: dict) -> float:
    return scores["nll_per_word"] / scores["entropy_rate"] if math.isfinite(scores["nll_per_word"]) else float("nan")
