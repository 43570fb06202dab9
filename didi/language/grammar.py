"""Reference languages: probabilistic grammars of short English texts with exact probabilities.

A grammar file (`.grammar`, UTF-8) holds lines of four kinds; `#` starts a comment, a line starting
with `|` continues the rule above:

    start story                         the rule every text is drawn from
    sentences opening, visit, ending    the rules that each produce exactly one sentence
    let hero = name                     a variable drawn once per text, before anything else,
    let friend = name != hero           from a word-list rule (optionally never equal to earlier ones)
    story -> opening visit ending       a rule: alternatives separated by |
    visit -> "$hero went to" place "with $friend." [3] | "$hero stayed home."

An alternative is a sequence of items: quoted text (words, the punctuation . , ! ? ; : and `$var`
references) or a rule name; `""` is the empty alternative; a trailing `[w]` is its weight (default 1;
probabilities are weights over the rule's total). Rules may not be recursive, so every language is
finite and its entropy is exact. A `let` rule must be a word list (each alternative one quoted text
without references), and every `let` variable must appear in every text, so a text determines its
bindings. Texts are words joined by single spaces, with no space before punctuation.

Semantics: the `let` variables are drawn in order (a variable with `!=` is drawn from its list with
the excluded values removed and the weights renormalized), then the start rule is expanded left to
right. log p(text) is the log of the sum over all derivations of the text, which the scorer
(`didi.language.parse`) computes exactly; for an unambiguous grammar (the `check` below finds
ambiguity) that is the generator's log-probability, and the entropy below is the exact entropy
of the text distribution.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import DidiError

WORD_RE = re.compile(r"[A-Za-z0-9']+|[.,!?;:]")
ITEM_RE = re.compile(r'\s*(?:"(?P<text>[^"]*)"|\[(?P<weight>[^\]]*)\]|(?P<rule>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\S))')
TEXT_ITEM_RE = re.compile(
    r"\$(?P<var>[A-Za-z_][A-Za-z0-9_]*)|(?P<word>[A-Za-z0-9']+|[.,!?;:])|(?P<space>\s+)|(?P<bad>.)")
PUNCT = frozenset(".,!?;:")
SENTENCE_END = frozenset(".!?")
BUILTIN_DIR = Path(__file__).with_name("grammars")


def words_of(text: str) -> list[str] | None:
    """The grammar's words of a text (None if the text is not written the canonical way: single spaces,
    no space before punctuation, nothing but letters, digits, apostrophes and . , ! ? ; :)."""
    words = WORD_RE.findall(text)
    return words if render(words) == text else None


def render(words: list[str] | tuple[str, ...]) -> str:
    out = []
    for w in words:
        if out and w not in PUNCT:
            out.append(" ")
        out.append(w)
    return "".join(out)


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: each ends after . ! or ? (a trailing fragment without one is a sentence too)."""
    parts = re.findall(r"[^.!?]*[.!?]|[^.!?]+$", text)
    return [p.strip() for p in parts if p.strip()]


Item = tuple[str, str]  # ("w", word) | ("r", rule name) | ("v", variable)


@dataclass(frozen=True)
class Alt:
    items: tuple[Item, ...]
    weight: float
    logp: float = 0.0  # log of weight / the rule's total weight


@dataclass
class Rule:
    name: str
    alts: list[Alt]
    line: int = 0

    @property
    def probs(self) -> list[float]:
        return [math.exp(a.logp) for a in self.alts]


@dataclass(frozen=True)
class Let:
    var: str
    rule: str
    excludes: tuple[str, ...] = ()


@dataclass
class Sample:
    text: str
    words: list[str]
    logp: float
    trace: list[tuple[str, int]] = field(default_factory=list)  # (choice point, outcome index)


def entropy(probs) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


class Grammar:
    """A parsed grammar: generation with exact log-probabilities, exact entropy and expected length."""

    def __init__(self, rules: dict[str, Rule], lets: list[Let], start: str, sentences: list[str], name: str = ""):
        self.rules, self.lets, self.start, self.sentence_rules, self.name = rules, lets, start, sentences, name
        self._validate()

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, source: str, name: str = "grammar") -> Grammar:
        rules: dict[str, Rule] = {}
        lets: list[Let] = []
        start, sentences = None, []
        current: Rule | None = None
        for lineno, raw in enumerate(source.splitlines(), 1):
            line = _strip_comment(raw).strip()
            if not line:
                continue
            where = f"{name}:{lineno}"
            if line.startswith("|"):
                if current is None:
                    raise DidiError(f"{where}: a '|' continuation line needs a rule above it")
                current.alts += _alternatives(line[1:], where)
                continue
            current = None
            head, _, rest = line.partition(" ")
            if head == "start":
                start = rest.strip()
            elif head == "sentences":
                sentences = [s for s in re.split(r"[\s,]+", rest.strip()) if s]
            elif head == "let":
                m = re.fullmatch(r"(\w+)\s*=\s*(\w+)((?:\s*!=\s*\w+)*)", rest.strip())
                if not m:
                    raise DidiError(f"{where}: expected 'let VAR = RULE [!= VAR ...]', got {line!r}")
                lets.append(Let(m.group(1), m.group(2), tuple(re.findall(r"!=\s*(\w+)", m.group(3)))))
            elif "->" in line:
                lhs, _, rhs = line.partition("->")
                lhs = lhs.strip()
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", lhs):
                    raise DidiError(f"{where}: bad rule name {lhs!r}")
                if lhs in rules:
                    raise DidiError(f"{where}: rule {lhs!r} is defined twice (line {rules[lhs].line})")
                current = rules[lhs] = Rule(lhs, _alternatives(rhs, where), lineno)
            else:
                raise DidiError(f"{where}: expected 'start', 'sentences', 'let', a rule 'NAME -> ...' or '| ...', "
                                f"got {line!r}")
        if start is None:
            raise DidiError(f"{name}: no 'start RULE' line")
        for r in rules.values():
            total = sum(a.weight for a in r.alts)
            r.alts = [Alt(a.items, a.weight, math.log(a.weight / total)) for a in r.alts]
        return cls(rules, lets, start, sentences, name)

    @classmethod
    def load(cls, spec: str | Path) -> Grammar:
        """A grammar by built-in name (`stories`) or from a `.grammar` file."""
        path = Path(spec)
        if not path.is_file():
            builtin = BUILTIN_DIR / f"{spec}.grammar"
            if not builtin.is_file():
                names = ", ".join(builtin_names())
                raise DidiError(f"no grammar {spec!r}: not a file and not a built-in one ({names})")
            path = builtin
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DidiError(f"cannot read grammar {path}: {e}") from None
        return cls.parse(source, name=path.stem)

    def _validate(self) -> None:
        where = self.name
        if self.start not in self.rules:
            raise DidiError(f"{where}: start rule {self.start!r} is not defined")
        for r in self.rules.values():
            if not r.alts:
                raise DidiError(f"{where}: rule {r.name!r} has no alternatives")
            for a in r.alts:
                for kind, val in a.items:
                    if kind == "r" and val not in self.rules:
                        raise DidiError(f"{where}:{r.line}: rule {r.name!r} uses undefined rule {val!r}")
        self.let_of = {}
        for let in self.lets:
            if let.var in self.let_of:
                raise DidiError(f"{where}: variable {let.var!r} is declared twice")
            if let.rule not in self.rules:
                raise DidiError(f"{where}: variable {let.var!r} draws from undefined rule {let.rule!r}")
            for ex in let.excludes:
                if ex not in self.let_of:
                    raise DidiError(f"{where}: variable {let.var!r} excludes {ex!r}, which is not declared before it")
                if self.let_of[ex].rule != let.rule:
                    raise DidiError(f"{where}: {let.var!r} != {ex!r} needs both drawn from the same rule")
            r = self.rules[let.rule]
            if any(len(a.items) == 0 or any(k != "w" for k, _ in a.items) for a in r.alts):
                raise DidiError(f"{where}: variable {let.var!r} must draw from a word list (rule {let.rule!r} has "
                                "alternatives that are empty or use rules or variables)")
            if len({a.items for a in r.alts}) != len(r.alts):
                raise DidiError(f"{where}: rule {let.rule!r} (drawn by {let.var!r}) lists a value twice")
            self.let_of[let.var] = let
        for r in self.rules.values():
            for a in r.alts:
                for kind, val in a.items:
                    if kind == "v" and val not in self.let_of:
                        raise DidiError(f"{where}:{r.line}: rule {r.name!r} uses undeclared variable ${val}")
        self._order()  # raises on recursion
        for s in self.sentence_rules:
            if s not in self.rules:
                raise DidiError(f"{where}: sentence rule {s!r} is not defined")
        always = self._always_used(self.start)
        for let in self.lets:
            if let.var not in always:
                raise DidiError(f"{where}: variable ${let.var} does not appear in every text, so a text would not "
                                "determine its value; use it in every alternative or drop the 'let'")

    def _order(self) -> list[str]:
        """Rules in dependency order (a rule after every rule it uses); raises on recursion."""
        state: dict[str, int] = {}
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise DidiError(f"{self.name}: recursive rules are not allowed ({' -> '.join(path + (name,))})")
            state[name] = 1
            for a in self.rules[name].alts:
                for kind, val in a.items:
                    if kind == "r":
                        visit(val, path + (name,))
            state[name] = 2
            order.append(name)

        for name in self.rules:
            visit(name, ())
        return order

    def _always_used(self, rule: str) -> set[str]:
        """Variables referenced in every derivation of `rule`."""
        sets = []
        for a in self.rules[rule].alts:
            used: set[str] = set()
            for kind, val in a.items:
                if kind == "v":
                    used.add(val)
                elif kind == "r":
                    used |= self._always_used(val)
            sets.append(used)
        return set.intersection(*sets)

    # -- generation ------------------------------------------------------------------------------------
    def value_words(self, var: str, index: int) -> tuple[str, ...]:
        return tuple(w for _, w in self.rules[self.let_of[var].rule].alts[index].items)

    def binding_logp(self, env: dict[str, int]) -> float:
        """log P(all let variables take the values in `env`) (value = alternative index of its rule)."""
        lp = 0.0
        for let in self.lets:
            alts = self.rules[let.rule].alts
            banned = {env[e] for e in let.excludes}
            if env[let.var] in banned:
                return -math.inf
            total = sum(a.weight for i, a in enumerate(alts) if i not in banned)
            lp += math.log(alts[env[let.var]].weight / total)
        return lp

    def sample(self, rng: random.Random) -> Sample:
        env: dict[str, int] = {}
        trace: list[tuple[str, int]] = []
        for let in self.lets:
            alts = self.rules[let.rule].alts
            banned = {env[e] for e in let.excludes}
            choices = [i for i in range(len(alts)) if i not in banned]
            env[let.var] = rng.choices(choices, weights=[alts[i].weight for i in choices])[0]
            trace.append(("$" + let.var, env[let.var]))
        words: list[str] = []
        lp = self.binding_logp(env)

        def expand(rule: str) -> None:
            nonlocal lp
            r = self.rules[rule]
            i = rng.choices(range(len(r.alts)), weights=[a.weight for a in r.alts])[0]
            trace.append((rule, i))
            lp += r.alts[i].logp
            for kind, val in r.alts[i].items:
                if kind == "w":
                    words.append(val)
                elif kind == "v":
                    words.extend(self.value_words(val, env[val]))
                else:
                    expand(val)

        expand(self.start)
        return Sample(render(words), words, lp, trace)

    def generate(self, num: int, seed: int = 0) -> list[Sample]:
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(num)]

    # -- exact quantities ------------------------------------------------------------------------------
    @cached_property
    def _linked(self) -> set[str]:
        """Variables that take part in an exclusion (the others are independent of everything)."""
        return {let.var for let in self.lets if let.excludes} | {e for let in self.lets for e in let.excludes}

    def _linked_assignments(self):
        """Every joint assignment of the linked variables, with its probability (exact enumeration)."""
        chain = [let for let in self.lets if let.var in self._linked]

        def walk(k: int, env: dict[str, int], p: float):
            if k == len(chain):
                yield dict(env), p
                return
            let = chain[k]
            alts = self.rules[let.rule].alts
            banned = {env[e] for e in let.excludes}
            total = sum(a.weight for i, a in enumerate(alts) if i not in banned)
            for i, a in enumerate(alts):
                if i not in banned:
                    yield from walk(k + 1, {**env, let.var: i}, p * a.weight / total)

        if chain:
            yield from walk(0, {}, 1.0)

    @cached_property
    def let_marginals(self) -> dict[str, list[float]]:
        """P(variable = value) for every let variable (exact)."""
        marg = {let.var: list(self.rules[let.rule].probs) for let in self.lets}
        for var in self._linked:
            marg[var] = [0.0] * len(marg[var])
        for env, p in self._linked_assignments():
            for var, i in env.items():
                marg[var][i] += p
        return marg

    @cached_property
    def binding_entropy(self) -> float:
        """Joint entropy (nats) of the let variables."""
        h = sum(entropy(self.rules[let.rule].probs) for let in self.lets if let.var not in self._linked)
        return h + entropy(p for _, p in self._linked_assignments())

    @cached_property
    def _rule_stats(self) -> dict[str, tuple[float, float]]:
        """Per rule: (derivation entropy in nats, expected number of words)."""
        var_len = {v: sum(p * len(self.value_words(v, i)) for i, p in enumerate(m))
                   for v, m in self.let_marginals.items()}
        stats: dict[str, tuple[float, float]] = {}
        for name in self._order():
            r = self.rules[name]
            h, n = entropy(r.probs), 0.0
            for a, p in zip(r.alts, r.probs):
                for kind, val in a.items:
                    if kind == "w":
                        n += p
                    elif kind == "v":
                        n += p * var_len[val]
                    else:
                        h += p * stats[val][0]
                        n += p * stats[val][1]
            stats[name] = (h, n)
        return stats

    @property
    def entropy(self) -> float:
        """Exact entropy of a text in nats (bindings + derivation; exact for an unambiguous grammar)."""
        return self.binding_entropy + self._rule_stats[self.start][0]

    @property
    def expected_words(self) -> float:
        return self._rule_stats[self.start][1]

    @property
    def entropy_rate(self) -> float:
        """Nats per word: the text entropy over the expected number of words (punctuation marks are words)."""
        return self.entropy / self.expected_words

    @cached_property
    def expected_uses(self) -> dict[str, float]:
        """Expected number of expansions of every rule per text."""
        uses = dict.fromkeys(self.rules, 0.0)
        uses[self.start] = 1.0
        for name in reversed(self._order()):  # users before the rules they use
            r = self.rules[name]
            for a, p in zip(r.alts, r.probs):
                for kind, val in a.items:
                    if kind == "r":
                        uses[val] += uses[name] * p
        return uses

    def choice_distributions(self) -> dict[str, list[float]]:
        """The true distribution of every choice point: each rule's alternatives, each variable's values
        (`$var`), and the kind of sentence (`sentence`: which sentence rule, by expected count)."""
        out = {name: r.probs for name, r in self.rules.items() if len(r.alts) > 1}
        out.update({"$" + v: m for v, m in self.let_marginals.items()})
        if self.sentence_rules:
            counts = [self.expected_uses[s] for s in self.sentence_rules]
            out["sentence"] = [c / sum(counts) for c in counts]
        return out

    def describe(self) -> dict:
        return {"name": self.name, "rules": len(self.rules), "variables": len(self.lets),
                "sentence_rules": len(self.sentence_rules), "entropy_nats_per_text": self.entropy,
                "expected_words": self.expected_words, "entropy_rate_nats_per_word": self.entropy_rate,
                "vocabulary": len(self.vocabulary)}

    @cached_property
    def vocabulary(self) -> set[str]:
        return {val for r in self.rules.values() for a in r.alts for kind, val in a.items if kind == "w"}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.grammar"))


def _strip_comment(line: str) -> str:
    out, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == "#" and not quoted:
            break
        out.append(ch)
    return "".join(out)


def _alternatives(text: str, where: str) -> list[Alt]:
    alts, items, weight = [], [], 1.0
    for part in _split_bars(text, where):
        items, weight = [], 1.0
        seen_weight = False
        for m in ITEM_RE.finditer(part):
            if m.group("bad"):
                raise DidiError(f"{where}: unexpected {m.group('bad')!r} (quote text, name rules, weights as [w])")
            if seen_weight and (m.group("text") is not None or m.group("rule")):
                raise DidiError(f"{where}: the weight [w] must end its alternative")
            if m.group("text") is not None:
                items += _text_items(m.group("text"), where)
            elif m.group("weight") is not None:
                try:
                    weight = float(m.group("weight"))
                except ValueError:
                    raise DidiError(f"{where}: bad weight [{m.group('weight')}]") from None
                if not (weight > 0 and math.isfinite(weight)):
                    raise DidiError(f"{where}: weights must be positive, got [{m.group('weight')}]")
                seen_weight = True
            else:
                items.append(("r", m.group("rule")))
        alts.append(Alt(tuple(items), weight))
    return alts


def _split_bars(text: str, where: str) -> list[str]:
    parts, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "|" and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise DidiError(f"{where}: unclosed quote")
    parts.append("".join(cur))
    for p in parts:
        if not p.strip():
            raise DidiError(f"{where}: an empty alternative must be written \"\"")
    return parts


def _text_items(text: str, where: str) -> list[Item]:
    items: list[Item] = []
    for m in TEXT_ITEM_RE.finditer(text):
        if m.group("bad"):
            raise DidiError(f"{where}: {m.group('bad')!r} cannot appear in grammar text (letters, digits, "
                            "apostrophes, . , ! ? ; : and $variables only)")
        if m.group("var"):
            items.append(("v", m.group("var")))
        elif m.group("word"):
            items.append(("w", m.group("word")))
    return items


def write_corpus(grammar: Grammar, num: int, seed: int, out: str | Path, overwrite: bool = False) -> Path:
    """Write `num` texts drawn with `seed` as JSON lines {"text", "logp"} (the format `didi train` reads)."""
    import json

    from ..fileio import atomic_write_text

    if num < 1:
        raise DidiError(f"--num must be >= 1, not {num}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise DidiError(f"{out} exists; pass --overwrite to replace it")
    if not out.name.endswith(".jsonl"):
        raise DidiError(f"write the corpus to a .jsonl file, not {out.name}")
    rows = (json.dumps({"text": s.text, "logp": round(s.logp, 6)}) for s in grammar.generate(num, seed))
    atomic_write_text(out, "".join(r + "\n" for r in rows))
    return out
