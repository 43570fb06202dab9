"""Reference languages: the grammar format, the exact scorer, exact entropy, the judge metrics and the CLI."""

import itertools
import json
import math
import random
import subprocess
import sys

import pytest
import torch

from didi.errors import DidiError
from didi.language import Grammar, Parser, builtin_names, check, render, score_texts, split_sentences, words_of

# A small grammar whose whole language can be enumerated: weighted alternatives, an optional sentence,
# a multi-word list entry, and two variables with an exclusion over a weighted list.
TINY = """
start text
sentences hello, walk, bye
let a = name
let b = name != a
text -> hello walk extra bye
extra -> walk [3] | ""
hello -> "Hi $a." [2] | "$a met $b."
walk -> "$a went to" place "." | "$b ran."
bye -> "Bye, $b!"
name -> "Ann" [3] | "Bo" | "Cy" [0.5]
place -> "the park" | "town" [2]
"""


def enumerate_language(g: Grammar) -> dict[str, float]:
    """Every text of a small grammar with its probability, by brute force over all choices."""
    names = g.rules["name"].alts
    out: dict[str, float] = {}
    for a, b in itertools.permutations(range(len(names)), 2):
        env = {"a": a, "b": b}
        p_env = math.exp(g.binding_logp(env))

        def expand(items, env=env):
            results = [([], 1.0)]
            for kind, val in items:
                nxt = []
                for words, p in results:
                    if kind == "w":
                        nxt.append((words + [val], p))
                    elif kind == "v":
                        nxt.append((words + list(g.value_words(val, env[val])), p))
                    else:
                        for alt in g.rules[val].alts:
                            for w2, p2 in expand(alt.items, env):
                                nxt.append((words + w2, p * math.exp(alt.logp) * p2))
                results = nxt
            return results

        for words, p in expand((("r", "text"),)):
            t = render(words)
            out[t] = out.get(t, 0.0) + p_env * p
    return out


def test_tiny_grammar_exact_probabilities_and_entropy_by_enumeration():
    g = Grammar.parse(TINY, "tiny")
    lang = enumerate_language(g)
    assert sum(lang.values()) == pytest.approx(1.0, abs=1e-12)
    parser = Parser(g)
    for text, p in lang.items():
        parsed = parser.parse_text(text)
        assert parsed is not None and parsed.parses == 1
        assert parsed.logp == pytest.approx(math.log(p), abs=1e-12)
    assert g.entropy == pytest.approx(-sum(p * math.log(p) for p in lang.values()), abs=1e-12)
    expected_words = sum(p * len(words_of(t)) for t, p in lang.items())
    assert g.expected_words == pytest.approx(expected_words, abs=1e-12)


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_grammar_scorer_equals_generator_and_entropy_matches_monte_carlo(name):
    g = Grammar.load(name)
    report = check(g, num=3000, seed=1)
    assert report["mismatched"] == 0 and report["ambiguous"] == 0 and report["invalid_sentences"] == 0
    assert abs(report["entropy_monte_carlo"] - g.entropy) < 4 * report["entropy_monte_carlo_se"]
    assert report["ok"]


def test_generated_texts_parse_back_with_their_log_probability():
    g = Grammar.load("stories")
    parser = Parser(g)
    for s in g.generate(300, seed=5):
        p = parser.parse_text(s.text)
        assert p is not None and p.parses == 1
        assert p.logp == pytest.approx(s.logp, abs=1e-9)
        assert sorted(p.trace) == sorted(s.trace)  # the same choices, found from the words alone


def test_invalid_texts_are_refused():
    g = Grammar.load("stories")
    parser = Parser(g)
    text = g.generate(1, seed=3)[0].text
    words = words_of(text)
    sentences = split_sentences(text)
    hero = g.value_words("hero", 0)[0]
    bad = [
        text.replace(" ", "  ", 1),  # not canonical spacing
        text + " ",
        text[:-1],  # last sentence without its full stop
        " ".join(reversed(sentences)),  # sentences out of order
        " ".join(words[:3] + ["zebra"] + words[4:]),  # a word outside the grammar
        text + " " + sentences[-1],  # one sentence too many
        "",
    ]
    for t in bad:
        assert parser.parse_text(t) is None, t
    # every sentence valid on its own, but a name does not agree across sentences: not a text of the grammar
    names = [g.value_words("hero", i)[0] for i in range(len(g.rules["name"].alts))]
    s = next(s for s in g.generate(100, seed=4) if sum(w in names for w in s.words) >= 3)
    used = [w for w in s.words if w in names]
    stranger = next(n for n in names if n not in used)
    k = max(i for i, w in enumerate(s.words) if w == used[-1])
    mixed = render(s.words[:k] + [stranger] + s.words[k + 1:])
    assert all(sp is not None for _, sp in parser.sentences(mixed))
    assert parser.parse_text(mixed) is None
    # a sentence that breaks an exclusion inside itself ($hero smiled at $friend.): hero != friend
    assert parser.parse_sentence(f"{hero} smiled at {hero}.") is None
    assert parser.parse_sentence(f"{hero} smiled at Ben.") is not None


def test_score_texts_on_grammar_samples_and_on_collapsed_ones():
    g = Grammar.load("stories")
    texts = [s.text for s in g.generate(1500, seed=7)]
    r = score_texts(g, texts)
    assert r["valid_sentences"] == 1.0 and r["valid_texts"] == 1.0 and r["distinct_texts"] > 0.99
    assert r["nll_per_word"] == pytest.approx(g.entropy_rate, rel=0.03)
    assert r["choice_entropy_ratio"] == pytest.approx(1.0, abs=0.02)
    # mode collapse: keep only texts whose first two sentences start like the first text's (one opening kind,
    # one hero): valid, but less diverse
    def key(t):
        return tuple(sent.split(" ")[0] for sent in split_sentences(t)[:2])

    collapsed = [t for t in texts if key(t) == key(texts[0])][:200]
    rc = score_texts(g, collapsed)
    assert len(collapsed) >= 10
    assert rc["valid_sentences"] == 1.0 and rc["choice_entropy_ratio"] < 0.9
    # broken texts: fewer valid sentences, no valid text
    broken = [" ".join(t.split(" ")[:-3]) for t in texts[:100]]
    rb = score_texts(g, broken)
    assert rb["valid_texts"] == 0.0 and rb["valid_sentences"] < 0.9
    assert score_texts(g, [""])["valid_sentences"] == 0.0  # an empty text is one invalid sentence


def test_score_texts_lists_every_choice_point():
    g = Grammar.parse(TINY, "tiny")
    texts = [s.text for s in g.generate(4000, seed=0)]
    r = score_texts(g, texts, per_choice=True)
    truth = g.choice_distributions()
    assert set(r["choices"]) <= set(truth)
    for c, v in r["choices"].items():
        assert v["entropy_true"] == pytest.approx(-sum(p * math.log(p) for p in truth[c] if p > 0))
        assert v["entropy_seen"] == pytest.approx(v["entropy_true"], abs=0.05), c


@pytest.mark.parametrize("source, message", [
    ("start a\na -> b\nb -> a", "recursive"),
    ("start a\na -> missing", "undefined rule"),
    ("start a\nlet x = n\na -> \"hi.\" | \"$x.\"\nn -> \"Ann\"", "does not appear in every text"),
    ("start a\na -> \"hi @ there.\"", "cannot appear"),
    ("start a\na -> \"hi.\" [0]", "positive"),
    ("start a\na -> \"hi.\" [2] \"x\"", "must end"),
    ("a -> \"hi.\"", "no 'start"),
    ("start a\na -> \"hi.\"\na -> \"ho.\"", "defined twice"),
    ("start a\nlet x = n\nlet y = m != x\na -> \"$x $y.\"\nn -> \"A\"\nm -> \"B\"", "same rule"),
    ("start a\nlet x = n\na -> \"$x.\"\nn -> \"A\" | b\nb -> \"B\"", "word list"),
    ("start a\na -> \"$z.\"", "undeclared variable"),
    ("start a\na -> \"hi\" |", "empty alternative"),
    ("start a\nfoo bar", "expected"),
])
def test_bad_grammars_are_refused_with_a_clear_error(source, message):
    with pytest.raises(DidiError, match=message):
        Grammar.parse(source, "bad")


def test_unknown_grammar_name():
    with pytest.raises(DidiError, match="not a file and not a built-in"):
        Grammar.load("no-such-grammar")


def test_random_generation_is_reproducible():
    g = Grammar.load("stories")
    assert [s.text for s in g.generate(20, seed=3)] == [s.text for s in g.generate(20, seed=3)]
    assert g.sample(random.Random(1)).text != g.sample(random.Random(2)).text


def test_cli_write_check_score(tmp_path):
    out = tmp_path / "c.jsonl"

    def didi(*args):
        return subprocess.run([sys.executable, "-m", "didi", *args], capture_output=True, text=True)

    r = didi("language", "write", "stories", "--num", "50", "--seed", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 50 and all(set(row) == {"text", "logp"} for row in rows)
    before = out.read_text()
    r = didi("language", "write", "stories", "--num", "5", "--out", str(out))
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == before
    r = didi("language", "score", "stories", str(out))
    assert r.returncode == 0 and json.loads(r.stdout)["valid_texts"] == 1.0
    bad = tmp_path / "bad.grammar"
    bad.write_text("start a\na -> b\nb -> a\n")
    r = didi("language", "info", str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "recursive" in r.stderr
    r = didi("language", "check", "stories", "--num", "200")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"]


def test_end_to_end_write_train_distil_score(tmp_path, grammar_teacher):
    """The reference-language path at test size: a corpus from a grammar, a teacher on text rows, a few DiDi
    iterations with the `lang` recipe (path rewards; here with token credit), judged exactly by the grammar."""
    import didi
    from didi.config import preset
    from didi.distill import distill, distill_preset
    from didi.evaluation.evaluate import evaluate

    g, teacher = grammar_teacher(TINY)
    assert preset("lang-tiny").data.layout == "rows"
    dcfg = distill_preset("lang", ["max_steps=3", "batch_size=2", "didi.group=2", "didi.disc_only_steps=1"])
    assert (dcfg.didi.reward_states, dcfg.didi.rollout_grid, dcfg.didi.student_steps) == ("path", "sampler", 4)
    result = distill(teacher, tmp_path / "student", dcfg,
                     overrides=["train.eval_every=0", "diffusion.grid_power=2"], progress=False)
    assert math.isfinite(result["loss"]) and result["pg"] != 0
    student = didi.load(tmp_path / "student")  # trained on the power-2 grid, it samples on it by default
    assert student.config.diffusion.grid_power == 2.0
    from didi.methods.didi_instruct import DiDiInstruct

    grid = DiDiInstruct(student.config, dcfg, student.tokenizer.mask_id, student.model).times(torch.rand(3))
    assert torch.allclose(grid[0], torch.tensor([1.0, 1 - 0.999 / 16, 1 - 0.999 / 4, 1 - 0.999 * 9 / 16, 1e-3]))
    report = evaluate(str(tmp_path / "student"), [2, 4], num=16, judge=f"grammar:{g}", out=tmp_path / "eval",
                      progress=False)
    rows = json.loads(report["json"].read_text())["rows"]
    assert [r["steps"] for r in rows] == [2, 4]
    assert all(0.0 <= r["valid_sentences"] <= 1.0 and r["nfe"] <= r["steps"] for r in rows)
    assert distill_preset("sdtt-lang").sdtt.end_steps == 4
