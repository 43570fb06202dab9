import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

from didi.errors import DidiError
from didi.evaluation import (
    Judge,
    frontier,
    interpolate_at_entropy,
    load_judge,
    mean_unigram_entropy,
    plot_frontier,
    plot_ppl_vs_nfe,
    unigram_entropy,
)

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

WORDS = "the cat sat on mat a dog ran far away".split()
TEXTS = ["the cat sat on the mat", "a dog ran", "the dog sat far away on a mat the end cat"]


def tiny_judge(**kw) -> Judge:
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3} | {w: i + 4 for i, w in enumerate(WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]"
    )
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=len(vocab), n_positions=64, bos_token_id=1, eos_token_id=2
    )
    return Judge(transformers.GPT2LMHeadModel(cfg), tok, **kw)


def by_hand(judge: Judge, text: str, max_len: int | None = None) -> tuple[float, int]:
    ids = [judge.tokenizer.bos_token_id] + judge.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids + [judge.tokenizer.eos_token_id])[:max_len]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = judge.model(x).logits[0]
    return F.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item(), len(ids) - 1


def test_judge_ppl_matches_hand_computation():
    j = tiny_judge()
    nll, n = j.nll([TEXTS[0]])
    ref, ref_n = by_hand(j, TEXTS[0])
    assert n == ref_n == 7  # 6 words + the EOS, BOS not counted
    assert nll == pytest.approx(ref, rel=1e-5)
    assert j.perplexity([TEXTS[0]]) == pytest.approx(math.exp(ref / ref_n), rel=1e-5)
    # Set PPL is token-weighted, not a mean of per-text PPLs.
    parts = [by_hand(j, t) for t in TEXTS]
    expect = math.exp(sum(p[0] for p in parts) / sum(p[1] for p in parts))
    assert j.perplexity(TEXTS) == pytest.approx(expect, rel=1e-5)


def test_judge_counts_only_the_first_eos():
    j = tiny_judge()
    text = "the cat [EOS] dog [EOS] ran"  # ids: BOS the cat EOS dog EOS ran EOS(appended)
    ids = [1] + j.tokenizer(text, add_special_tokens=False)["input_ids"] + [2]
    assert ids.count(2) == 3
    x = torch.tensor([ids])
    with torch.no_grad():
        per = F.cross_entropy(j.model(x).logits[0, :-1], x[0, 1:], reduction="none")
    counted = [0, 1, 2, 3, 5]  # the, cat, first EOS, dog, ran; the later EOS tokens are context only
    nll, n = j.nll([text])
    assert n == 5
    assert nll == pytest.approx(per[counted].sum().item(), rel=1e-5)


def test_judge_batching_is_invariant():
    a = tiny_judge(batch_size=1).nll(TEXTS)
    b = tiny_judge(batch_size=3).nll(TEXTS)
    assert a[1] == b[1]
    assert a[0] == pytest.approx(b[0], rel=1e-5)


def test_judge_truncation():
    j = tiny_judge(max_length=5)
    nll, n = j.nll([TEXTS[2]])
    assert n == 4
    assert nll == pytest.approx(by_hand(j, TEXTS[2], max_len=5)[0], rel=1e-5)
    assert tiny_judge().max_length == 64  # falls back to the model's context


def test_judge_rejects_single_string():
    with pytest.raises(DidiError):
        tiny_judge().nll("the cat")


def test_load_judge_bad_name_is_one_line_error(tmp_path):
    with pytest.raises(DidiError) as e:
        load_judge(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)


def test_unigram_entropy():
    assert unigram_entropy([1, 1, 1, 1]) == 0
    assert unigram_entropy(torch.tensor([1, 2, 3, 4])) == pytest.approx(math.log(4))
    p = [0.5, 0.25, 0.25]
    assert unigram_entropy([7, 7, 3, 9]) == pytest.approx(-sum(q * math.log(q) for q in p))
    assert mean_unigram_entropy(torch.tensor([[1, 1, 1, 1], [1, 2, 3, 4]])) == pytest.approx(math.log(4) / 2)
    with pytest.raises(DidiError):
        unigram_entropy([])


def test_interpolate_at_entropy():
    pts = [(5.0, math.e**3), (4.0, math.e**2), (6.0, math.e**5)]  # unsorted on purpose
    assert interpolate_at_entropy(pts, 4.5) == pytest.approx(math.e**2.5)
    assert interpolate_at_entropy(pts, 5.5) == pytest.approx(math.e**4)
    assert interpolate_at_entropy(pts, 4.0) == pytest.approx(math.e**2)
    assert interpolate_at_entropy(pts, 3.9) is None
    assert interpolate_at_entropy(pts, 6.1) is None
    assert interpolate_at_entropy([], 5.0) is None


def test_frontier():
    rows = [
        {"entropy": 5.0, "gen_ppl": 30.0, "t": "a"},
        {"entropy": 5.2, "gen_ppl": 25.0, "t": "b"},  # dominates a
        {"entropy": 4.0, "gen_ppl": 10.0, "t": "c"},
        {"entropy": 5.6, "gen_ppl": 80.0, "t": "d"},
        {"entropy": 3.0, "gen_ppl": 12.0, "t": "e"},  # dominated by c
    ]
    assert [r["t"] for r in frontier(rows)] == ["c", "b", "d"]
    with pytest.raises(DidiError):
        frontier([{"entropy": 1.0}])


def test_plots_write_pngs(tmp_path):
    series = {"teacher": [(5.6, 90.0), (5.2, 40.0), (4.8, 20.0)], "student": [(5.5, 60.0), (5.0, 25.0)]}
    f = tmp_path / "sub" / "frontier.png"
    plot_frontier(series, f, target_entropy=5.3)
    n = tmp_path / "nfe.png"
    plot_ppl_vs_nfe({"teacher": [(8, 120.0), (64, 60.0), (1024, 40.0)], "student": [(8, 50.0), (16, 45.0)]}, n)
    for p in (f, n):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["frontier.png", "nfe.png", "sub"]  # no tmp files left


@pytest.mark.skipif(not os.environ.get("DIDI_SLOW"), reason="loads SmolLM2-135M (~25 s on CPU); set DIDI_SLOW=1")
def test_smollm2_judge_separates_text_from_word_salad():
    pytest.importorskip("gguf")
    t0 = time.time()
    try:
        j = load_judge("smollm2-135m")
    except DidiError as e:
        pytest.skip(str(e))
    print(f"SmolLM2 load: {time.time() - t0:.1f}s")
    s = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park, and children were playing."
    shuffled = "park, brown the lazy were over sunny dog. children The day in quick a fox playing. the It jumps and was"
    good, bad = j.perplexity([s]), j.perplexity([shuffled])
    print(f"PPL normal={good:.1f} shuffled={bad:.1f}")
    assert math.isfinite(good) and good < 100
    assert bad > 5 * good
    assert load_judge("smollm2-135m").model is j.model  # cached in-process
