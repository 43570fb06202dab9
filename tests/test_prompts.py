"""Prompted generation: the exact conditional judge (`didi.language.prompts`), per-sample prompts in sampling (the
prompt's tokens never change, for diffusion and AR runs), prompt codes for a student with a code input
(`didi.codes`), unprompted sampling unchanged, and prompted rows in `didi eval`."""

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

import didi
from didi import codes
from didi.cli import PROMPT_CODES, main
from didi.distill import DistillConfig, distill
from didi.errors import DidiError
from didi.language import Grammar, heldout_prompts, make_prompt, prompt_of, score_prompted
from didi.language.prompts import completion
from didi.prior import NoisePrior, write_prior
from didi.sampling import SplitDenoiser, ancestral_sample

STORIES = Grammar.load("stories")

# every text is three sentences; the hero and the pal are drawn once and recur
GRAMMAR = """
start text
sentences first, middle, last
let hero = name
let pal = name != hero
text -> first middle last
first -> "$hero woke up." | "$hero met $pal."
middle -> "$hero went to the" place "." | "$hero ran home."
last -> "$hero thanked $pal." | "$pal said hi."
name -> "Ann" | "Bo" | "Cy" | "Dan"
place -> "park" | "lake" | "shop"
"""


def test_a_completion_that_renames_the_hero_is_invalid_and_disagrees():
    text = ("One day, Max met Nora. Max and Nora went to the beach. They met a horse. The horse dropped a yellow "
            "coin. Then Max went home scared.")
    p = prompt_of(STORIES, text, 2)
    assert p.text == "One day, Max met Nora. Max and Nora went to the beach."
    assert set(p.bindings) == {"hero", "friend"} and p.source == text
    good = score_prompted(STORIES, [p], [text])
    assert good["valid_texts"] == 1.0 and good["valid_sentences"] == 1.0 and good["prompt_agreement"] == 1.0
    renamed = text.replace("Then Max went", "Then Ben went")
    bad = score_prompted(STORIES, [p], [renamed])
    assert bad["valid_texts"] == 0.0 and bad["prompt_agreement"] == 0.0
    assert bad["valid_sentences"] == 1.0  # each sentence is still a sentence of the grammar
    lost = score_prompted(STORIES, [p], ["One day, Ben met Nora. " + text.split(". ", 1)[1]])
    assert lost["prompt_kept"] == 0.0 and lost["valid_texts"] == 0.0
    empty = score_prompted(STORIES, [p], [p.text])
    assert empty["valid_sentences"] == 0.0 and empty["sentences_per_text"] == 1.0
    assert completion(p.text, p.text + " They met a cat.") == "They met a cat."
    assert completion(p.text, "It was sunny.") is None
    assert completion("They met a cat.", "They met a cat..") == "."  # kept word for word, then a stray mark
    assert completion("They met a cat", "They met a cats.") is None


def test_true_continuations_score_one_and_a_fixed_completion_loses_its_choice_entropy():
    prompts = heldout_prompts(STORIES, 3000, 2)
    assert prompts == heldout_prompts(STORIES, 3000, 2)  # the same prompts every time
    true = score_prompted(STORIES, prompts, [p.source for p in prompts], per_choice=True)
    assert true["valid_texts"] == 1.0 and true["prompt_agreement"] == 1.0
    assert true["choice_entropy_ratio"] == pytest.approx(1.0, abs=0.02)
    # variables a two-sentence prompt binds, and those tied to them by !=, are not choices of the completion
    assert "$hero" not in true["choices"] and "$friend" not in true["choices"] and "sentence" not in true["choices"]
    fixed = [p.text + " They met a cat. The cat ran away." for p in prompts]
    assert score_prompted(STORIES, prompts, fixed)["choice_entropy_ratio"] < 0.3
    # a one-sentence prompt that binds nobody ("It was sunny.") leaves the names free: their draws are choices
    one = heldout_prompts(STORIES, 2000, 1)
    free = score_prompted(STORIES, one, [p.source for p in one], per_choice=True)
    assert "$hero" in free["choices"] and free["choice_entropy_ratio"] == pytest.approx(1.0, abs=0.02)


def test_prompts_refuse_what_they_cannot_use():
    assert prompt_of(STORIES, "It was sunny. Ben took Ella to the park.", 2) is None  # nothing left to complete
    with pytest.raises(DidiError, match="at least one sentence"):
        prompt_of(STORIES, "It was sunny.", 0)
    with pytest.raises(DidiError, match="not a sentence of grammar stories"):
        make_prompt(STORIES, "It was purple.")
    with pytest.raises(DidiError, match="two values"):
        make_prompt(STORIES, "One day, Max met Nora. Ben and Nora went to the park.")
    with pytest.raises(DidiError, match="more than 9 sentences"):
        heldout_prompts(STORIES, 3, 9)
    with pytest.raises(DidiError, match="2 prompts for 1 samples"):
        score_prompted(STORIES, heldout_prompts(STORIES, 2, 1), ["x"])


class CodeBook(torch.nn.Module):
    """A stand-in student whose code alone decides its text: xi nearest centre k writes texts[k], whatever the
    state (logits 20 on texts[k][i], 0 elsewhere, at every position)."""

    def __init__(self, texts: torch.Tensor, centres: torch.Tensor, vocab: int):
        super().__init__()
        self.texts, self.centres = texts, centres
        self.config = SimpleNamespace(vocab_size=vocab, noise_dim=centres.shape[1])
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def hidden_states(self, z, sigma, noise):
        k = torch.cdist(noise.float(), self.centres).argmin(1)
        return 20.0 * torch.nn.functional.one_hot(self.texts[k], self.config.vocab_size + 1).float(), z[:, :1]

    def output_layer(self, h, c):
        return h

    def forward(self, z, sigma, noise):
        return self.output_layer(*self.hidden_states(z, sigma, noise))


def test_a_code_inferred_from_a_full_text_decodes_that_text_more_often_than_a_prior_draw():
    gen = torch.Generator().manual_seed(0)
    K, L, V, D = 8, 6, 10, 3
    texts = torch.stack([torch.randperm(V, generator=gen)[:L] for _ in range(K)])
    centres = 3.0 * torch.randn(K, D, generator=gen)
    model = CodeBook(texts, centres, V)
    prior = NoisePrior(centres.double(), torch.full((K, D), 1e-4, dtype=torch.float64),
                       torch.full((K,), -torch.log(torch.tensor(float(K))), dtype=torch.float64), {})
    scorer = codes.ExemplarScorer(model, prior, mask_id=V, sigma=codes.sigma_at_one())
    n = 64
    target = torch.randint(K, (n,), generator=gen)
    clamp = texts[target]  # each row: one whole text, every position given
    fixed = codes.clamped_positions(clamp.clone(), anchored=False)

    def decoded(noise):  # decode without the clamp: what the code alone writes
        out = ancestral_sample(SplitDenoiser(model, [], noise), n, L, 2, V, generator=torch.Generator().manual_seed(1))
        return (out.tokens == texts[target]).all(1).double().mean().item()

    inferred = codes.exemplar_codes(scorer, clamp, fixed, generator=torch.Generator().manual_seed(2))
    drawn = prior.sample(n, torch.Generator().manual_seed(2))
    assert decoded(inferred) >= 0.95 > 0.5 > decoded(drawn)
    # the per-component log-probabilities are kept: a second call makes no forward pass and scores the same
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    again = scorer.scores(clamp, fixed)
    assert not calls
    fresh = codes.ExemplarScorer(model, prior, V, codes.sigma_at_one(), cache_bytes=0).scores(clamp, fixed)
    assert calls and torch.allclose(again, fresh, atol=0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny rows-layout teacher of GRAMMAR, a latent student of it with an exemplar prior, and an AR run."""
    from didi.config import preset
    from didi.language import write_corpus

    root = tmp_path_factory.mktemp("prompted")
    g = root / "three.grammar"
    g.write_text(GRAMMAR)
    corpus = root / "c.jsonl"
    write_corpus(Grammar.load(str(g)), 300, 0, corpus)
    base = [f"data.source={corpus}", "data.layout=rows", f"data.cache_dir={root / 'cache'}", "model.length=20",
            "train.max_steps=20", "train.eval_every=0", "data.tokenizer=bpe:300"]
    didi.train(preset("test", base), root / "teacher", progress=False)
    didi.train(preset("test", base + ["model.arch=ar", f"data.tokenizer={root / 'teacher' / 'tokenizer'}"]),
               root / "ar", progress=False)
    lat = DistillConfig(method="latent", student_noise_dim=4, max_steps=6, batch_size=4, warmup_steps=1,
                        student_lr=3e-3, ema=0.0, latent=dict(beta=0.1))
    distill(root / "teacher", root / "lat", lat, overrides=["train.eval_every=0", "train.save_every=0"],
            progress=False)
    return SimpleNamespace(grammar=g, teacher=root / "teacher", ar=root / "ar", lat=root / "lat", root=root)


def prompt_texts(n: int) -> list[str]:
    g = Grammar.parse(GRAMMAR, "three")
    rng = random.Random(0)
    return [prompt_of(g, g.sample(rng).text, 1 + i % 2).text for i in range(n)]


def assert_prompts_kept(pipe, out, prompts):
    for row, p in zip(out.tokens.tolist(), prompts):
        ids = [pipe.tokenizer.eos_id, *pipe.tokenizer.encode(p)]
        assert row[:len(ids)] == ids
    assert all(t.startswith(p) for t, p in zip(out.text, prompts))


def test_prompted_sampling_never_changes_the_prompts_tokens(runs):
    prompts = prompt_texts(6)  # one and two sentences: prompts of different lengths in one batch
    for run in (runs.teacher, runs.ar):
        pipe = didi.load(run)
        out = pipe.sample(num=6, steps=4, seed=0, prefix=prompts, batch_size=4)
        assert_prompts_kept(pipe, out, prompts)
        assert torch.equal(out.tokens, pipe.sample(num=6, steps=4, seed=0, prefix=prompts, batch_size=4).tokens)
        with pytest.raises(DidiError, match="2 prefixes for 6 samples"):
            pipe.sample(num=6, steps=4, prefix=prompts[:2])
    ar = didi.load(runs.ar).sample(num=6, seed=0, prefix=prompts)
    shortest = min(len(didi.load(runs.ar).tokenizer.encode(p)) for p in prompts) + 1  # + the row's EOS
    assert int(ar.nfe[0]) == 20 - shortest  # the part every row gives is fed in one call


def test_a_student_with_a_code_infers_it_from_the_prompt_and_unprompted_sampling_is_unchanged(runs):
    pipe = didi.load(runs.lat)
    prompts = prompt_texts(4)
    with pytest.raises(DidiError, match="has none"):
        pipe.sample(num=4, steps=2, prefix=prompts)  # exemplar codes weigh a prior the run does not have yet
    write_prior(runs.lat, 0, texts=64)
    pipe = didi.load(runs.lat)
    for code in PROMPT_CODES:
        out = pipe.sample(num=4, steps=4, seed=0, prefix=prompts, prompt_code=code)
        assert_prompts_kept(pipe, out, prompts)
    assert codes.PROMPT_CODES == PROMPT_CODES
    # unprompted: the code comes from the prior exactly as before prompt codes existed, whatever prompt_code says
    n, L = 5, pipe.config.model.length
    gen = torch.Generator().manual_seed(3)
    noise = pipe.prior().sample(n, gen)
    clamp = pipe.clamp_from_text(1, None, None).repeat(n, 1)
    before = ancestral_sample(SplitDenoiser(pipe.model, [], noise), n, L, 4, pipe.tokenizer.mask_id, clamp=clamp,
                              generator=gen)
    for code in PROMPT_CODES:
        assert torch.equal(pipe.sample(num=n, steps=4, seed=3, prompt_code=code).tokens, before.tokens)
    with pytest.raises(DidiError, match="unknown prompt code"):
        pipe.sample(num=2, steps=2, prompt_code="nearest")


def test_eval_prompted_rows_and_their_bad_input(runs, capsys):
    out = runs.root / "ev"
    main(["eval", str(runs.lat), "--judge", f"grammar:{runs.grammar}", "--prompts", "1", "--steps", "2",
          "--num", "6", "--out", str(out), "--quiet"])
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert rows[0]["prompts"] == 1 and rows[0]["prompt_code"] == "exemplar" and rows[0]["prompt_kept"] == 1.0
    agreement = rows[0]["prompt_agreement"]
    assert math.isnan(agreement) or 0.0 <= agreement <= 1.0  # nan: no valid sentence used a prompt's variable
    assert "prompt_agreement" in (out / "eval.md").read_text()
    main(["eval", str(runs.ar), "--judge", f"grammar:{runs.grammar}", "--prompts", "2", "--num", "6",
          "--out", str(out), "--name", "ar", "--quiet"])
    ar = json.loads((out / "ar.json").read_text())["rows"][0]
    assert ar["prompts"] == 2 and ar["prompt_code"] == "" and ar["prompt_kept"] == 1.0
    capsys.readouterr()
    for bad, msg in ((["--prompts", "1"], "need a reference-language judge"),
                     (["--prompts", "1", "--judge", f"grammar:{runs.grammar}", "--guided"], "drop --guided"),
                     (["--prompts", "-1"], "must be >= 0")):
        with pytest.raises(SystemExit):
            main(["eval", str(runs.teacher), "--steps", "2", "--num", "2", "--out", str(out / "x"), *bad])
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
