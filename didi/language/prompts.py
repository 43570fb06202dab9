"""Prompted generation on a reference language, judged exactly.

A prompt is the first k sentences of a text; a model continues it. `score_prompted` judges each (prompt, sample):

- prompt_kept: the sample starts with the prompt, word for word;
- valid_texts: the whole sample (prompt + completion) is a text of the grammar. Its `let` variables are drawn once
  per text, so a completion that renames the prompt's hero is invalid;
- valid_sentences: the share of the completion's sentences that a sentence rule derives (variables free);
- prompt_agreement: of the completion's uses (in valid sentences) of a variable the prompt binds, the share that
  use the prompt's value;
- choice_entropy_ratio: the completion's choices against their true conditional law. Given the prompt, each rule
  the completion expands is still drawn from its own alternatives (the grammar is context-free apart from its
  variables), and a variable that the prompt leaves unbound, and that is not tied by `!=` to one it binds, still
  follows its marginal; those choices are counted (Miller-Madow, as in `metrics.score_texts`). Variables the prompt
  binds have no entropy left (their use is `prompt_agreement`), and the remaining ones (tied to a bound variable)
  and the kind of sentence depend on the prompt, so they are left out: the ratio is exact for what it counts.

Held-out prompts (`heldout_prompts`) are cut from texts drawn with their own seed, not the corpus's.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..errors import DidiError
from .grammar import WORD_RE, Grammar, split_sentences
from .metrics import choice_entropy
from .parse import Parser

PROMPT_SEED = 20_261_206  # texts the prompts are cut from: a seed no corpus of this project is written with


@dataclass(frozen=True)
class Prompt:
    text: str  # the first k sentences
    bindings: dict = field(default_factory=dict)  # variable -> value index, for the variables its sentences use
    source: str = ""  # the whole text it was cut from ("" when given as a prompt only)


def prompt_of(grammar: Grammar, text: str, k: int, parser: Parser | None = None) -> Prompt | None:
    """The first `k` sentences of `text` as a Prompt (None when the text has no more than k sentences: nothing would
    be left to complete). Raises when a prompt sentence is not of the grammar or its variables disagree."""
    if k < 1:
        raise DidiError(f"a prompt is at least one sentence, not {k}")
    sentences = split_sentences(text)
    if len(sentences) <= k:
        return None
    return make_prompt(grammar, " ".join(sentences[:k]), parser, source=text)


def make_prompt(grammar: Grammar, text: str, parser: Parser | None = None, source: str = "") -> Prompt:
    """A prompt from its text: the variables its sentences bind, read off their parses."""
    parser = parser or Parser(grammar)
    bindings: dict[str, int] = {}
    for sentence, sp in parser.sentences(text):
        if sp is None:
            raise DidiError(f"prompt sentence {sentence!r} is not a sentence of grammar {grammar.name}")
        for point, value in sp.trace:
            if point.startswith("$"):
                if bindings.setdefault(point[1:], value) != value:
                    raise DidiError(f"prompt {text!r} gives ${point[1:]} two values")
    return Prompt(text, bindings, source)


def heldout_prompts(grammar: Grammar, num: int, k: int, seed: int = PROMPT_SEED) -> list[Prompt]:
    """`num` prompts: the first `k` sentences of texts drawn from the grammar with `seed` (texts of k sentences or
    fewer are passed over)."""
    if num < 1:
        raise DidiError(f"the number of prompts must be >= 1, not {num}")
    import random

    rng, parser, out = random.Random(seed), Parser(grammar), []
    for _ in range(50 * num):
        p = prompt_of(grammar, grammar.sample(rng).text, k, parser)
        if p is not None:
            out.append(p)
            if len(out) == num:
                return out
    raise DidiError(f"grammar {grammar.name}: too few texts have more than {k} sentences to cut {num} prompts")


def completion(prompt: str, text: str) -> str | None:
    """What `text` adds after `prompt` (None when it does not start with the prompt, word for word: a last word
    continued, "cat" -> "cats", is not the prompt's)."""
    if not text.startswith(prompt):
        return None
    words = WORD_RE.findall(prompt)
    if WORD_RE.findall(text)[:len(words)] != words:
        return None
    return text[len(prompt):].strip()


def _tied(grammar: Grammar) -> dict[str, set[str]]:
    """Each variable's group: the variables linked to it by `!=`, itself included."""
    group = {let.var: {let.var} for let in grammar.lets}
    for let in grammar.lets:
        for other in let.excludes:
            merged = group[let.var] | group[other]
            for v in merged:
                group[v] = merged
    return group


def score_prompted(grammar: Grammar, prompts: list[Prompt], texts: list[str], parser: Parser | None = None,
                   per_choice: bool = False) -> dict:
    """Judge samples `texts[i]` as continuations of `prompts[i]` (see the module docstring)."""
    if len(prompts) != len(texts):
        raise DidiError(f"{len(prompts)} prompts for {len(texts)} samples")
    parser = parser or Parser(grammar)
    truth = grammar.choice_distributions()
    tied = _tied(grammar)
    seen: dict[str, Counter] = defaultdict(Counter)
    kept = valid_text = n_sent = valid_sent = agree = uses = 0
    completions = []
    for prompt, text in zip(prompts, texts):
        rest = completion(prompt.text, text)
        completions.append(rest)
        if rest is None:
            n_sent += 1  # a sample that lost its prompt completes nothing: one invalid sentence
            continue
        kept += 1
        valid_text += parser.parse_text(text) is not None
        sentences = parser.sentences(rest) if rest else []
        n_sent += max(len(sentences), 1)  # an empty completion is one invalid sentence
        free = {v for v in tied if not (tied[v] & prompt.bindings.keys())}
        for _, sp in sentences:
            if sp is None:
                continue
            valid_sent += 1
            for point, value in sp.trace:
                var = point[1:] if point.startswith("$") else None
                if var is not None and var in prompt.bindings:
                    uses += 1
                    agree += value == prompt.bindings[var]
                elif (var is None or var in free) and point in truth:
                    seen[point][value] += 1
    n = max(len(texts), 1)
    choices, ratio = choice_entropy(seen, truth)
    out = {"valid_sentences": valid_sent / max(n_sent, 1), "valid_texts": valid_text / n, "prompt_kept": kept / n,
           "prompt_agreement": agree / uses if uses else math.nan, "sentences_per_text": n_sent / n,
           "distinct_texts": len(set(texts)) / n, "choice_entropy_ratio": ratio}
    if per_choice:
        out["choices"] = choices
    return out
