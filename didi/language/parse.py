"""The exact scorer of a reference language: is a text (each sentence) in the grammar, and with what
log-probability.

Parsing is exhaustive backtracking over the grammar's words (languages are finite and texts short):
`parse_text` sums the probability of every derivation of the whole text (the let variables bound
where first used, their joint probability added at the end); `parse_sentence` asks whether one
sentence is derivable from any sentence rule, with the variables free (any value, consistent within
the sentence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .grammar import Grammar, split_sentences, words_of


@dataclass
class TextParse:
    logp: float  # log of the summed probability of every derivation
    parses: int  # number of derivations (1 for an unambiguous grammar)
    words: int
    trace: tuple  # choices of the first derivation: (rule, alternative) and ("$var", value)


@dataclass
class SentenceParse:
    rule: str  # the sentence rule that derives it
    trace: tuple


class Parser:
    def __init__(self, grammar: Grammar):
        self.g = grammar
        self.var_free = self._var_free()

    def _var_free(self) -> dict[str, bool]:
        free: dict[str, bool] = {}
        for name in self.g._order():
            free[name] = all(kind == "w" or (kind == "r" and free[val])
                             for a in self.g.rules[name].alts for kind, val in a.items)
        return free

    # -- matching: generators of (end position, log-prob, bindings, trace) ---------------------------------
    def _run(self, words: list[str], rule: str):
        memo: dict[tuple[str, int], list] = {}
        g, n = self.g, len(words)

        def seq(items, k, pos, env):
            if k == len(items):
                yield pos, 0.0, env, ()
                return
            kind, val = items[k]
            if kind == "w":
                if pos < n and words[pos] == val:
                    yield from seq(items, k + 1, pos + 1, env)
                return
            heads = var(val, pos, env) if kind == "v" else rule_(val, pos, env)
            for pos2, lp2, env2, tr2 in heads:
                for pos3, lp3, env3, tr3 in seq(items, k + 1, pos2, env2):
                    yield pos3, lp2 + lp3, env3, tr2 + tr3

        def rule_(name, pos, env):
            if self.var_free[name]:  # no bindings involved: parse once per position
                key = (name, pos)
                if key not in memo:
                    memo[key] = [(p2, lp, tr) for p2, lp, _, tr in expand(name, pos, {})]
                for p2, lp, tr in memo[key]:
                    yield p2, lp, env, tr
                return
            yield from expand(name, pos, env)

        def expand(name, pos, env):
            for i, a in enumerate(g.rules[name].alts):
                for pos2, lp, env2, tr in seq(a.items, 0, pos, env):
                    yield pos2, lp + a.logp, env2, ((name, i),) + tr

        def var(name, pos, env):
            if name in env:
                value = g.value_words(name, env[name])
                if tuple(words[pos:pos + len(value)]) == value:
                    yield pos + len(value), 0.0, env, ()
                return
            let = g.let_of[name]
            banned = {env[e] for e in let.excludes if e in env}
            banned |= {env[o.var] for o in g.lets if name in o.excludes and o.var in env}
            for i in range(len(g.rules[let.rule].alts)):
                if i in banned:
                    continue
                value = g.value_words(name, i)
                if tuple(words[pos:pos + len(value)]) == value:
                    yield pos + len(value), 0.0, {**env, name: i}, (("$" + name, i),)

        return [(pos, lp, env, tr) for pos, lp, env, tr in rule_(rule, 0, {}) if pos == n]

    # -- public ----------------------------------------------------------------------------------------
    def parse_text(self, text: str) -> TextParse | None:
        """The text's exact log-probability under the grammar, or None if it is not a text of the grammar."""
        words = words_of(text)
        if not words:
            return None
        results = []
        for _, lp, env, tr in self._run(words, self.g.start):
            lb = self.g.binding_logp(env)
            if lb > -math.inf:
                results.append((lp + lb, tr))
        if not results:
            return None
        m = max(lp for lp, _ in results)
        total = m + math.log(sum(math.exp(lp - m) for lp, _ in results))
        return TextParse(total, len(results), len(words), results[0][1])

    def parse_sentence(self, sentence: str) -> SentenceParse | None:
        words = words_of(sentence)
        if not words:
            return None
        for rule in self.g.sentence_rules:
            results = self._run(words, rule)
            if results:
                return SentenceParse(rule, results[0][3])
        return None

    def sentences(self, text: str) -> list[tuple[str, SentenceParse | None]]:
        return [(s, self.parse_sentence(s)) for s in split_sentences(text)]


def check(grammar: Grammar, num: int = 2000, seed: int = 0) -> dict:
    """Sample `num` texts and confirm what exactness needs: each parses back with the generator's log-probability,
    in one derivation (unambiguous), its sentences parse one by one, and the Monte-Carlo entropy agrees with the
    exact one (within 4 standard errors)."""
    parser = Parser(grammar)
    samples = grammar.generate(num, seed)
    mismatched = ambiguous = bad_sentences = 0
    for s in samples:
        p = parser.parse_text(s.text)
        if p is None or abs(p.logp - s.logp) > 1e-9:
            mismatched += 1
        elif p.parses > 1:
            ambiguous += 1
        bad_sentences += sum(sp is None for _, sp in parser.sentences(s.text))
    nll = [-s.logp for s in samples]
    mean = sum(nll) / num
    se = math.sqrt(sum((x - mean) ** 2 for x in nll) / max(num - 1, 1) / num)
    return {**grammar.describe(), "samples": num, "mismatched": mismatched, "ambiguous": ambiguous,
            "invalid_sentences": bad_sentences, "entropy_monte_carlo": mean, "entropy_monte_carlo_se": se,
            "ok": mismatched == 0 and ambiguous == 0 and bad_sentences == 0 and abs(mean - grammar.entropy) <= 4 * se}
