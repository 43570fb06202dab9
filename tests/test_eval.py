"""`didi eval` end to end on tiny runs, with a tiny randomly initialized judge saved as a local HF model."""

import json

import pytest
import torch
from english_corpus import demo_documents

import didi
from didi.cli import main
from didi.config import preset
from didi.evaluation import evaluate as ev

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    corpus = root / "stories.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_documents(200)))
    runs = {}
    for arch in ("dit", "ar"):
        cfg = preset("test", [f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", "train.max_steps=10",
                              "train.eval_every=0", "model.length=16", f"model.arch={arch}"])
        didi.train(cfg, root / arch, progress=False)
        runs[arch] = root / arch
    # a tiny GPT-2 judge with a byte-level tokenizer, saved like any Hugging Face model directory
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(demo_documents(200), trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300,
                                                                 n_positions=64, eos_token_id=0, bos_token_id=0))
    judge = root / "judge"
    model.save_pretrained(judge)
    tok.save_pretrained(judge)
    return runs, judge, root


def test_eval_rows_frontier_plots_and_cache(setup, capsys, monkeypatch):
    runs, judge, root = setup
    out = root / "report"
    main(["eval", str(runs["dit"]), "--steps", "2,4", "--num", "6", "--batch-size", "4", "--judge", str(judge),
          "--temperatures", "0.7,1.0", "--reference", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert "| model | steps |" in printed and "interpolated at entropy" in printed
    rep = json.loads((out / "eval.json").read_text())
    rows = rep["rows"]
    assert [r["sampler"] for r in rows] == ["data"] + ["ancestral"] * 4
    assert [(r["steps"], r["temperature"]) for r in rows[1:]] == [(2, 0.7), (2, 1.0), (4, 0.7), (4, 1.0)]
    for r in rows[1:]:
        assert 1 <= r["nfe"] <= r["nfe_max"] <= r["steps"]
        assert r["tokens_per_step"] == 16 / r["steps"] and r["total_evals"] == r["nfe"]
        assert r["judge_ppl"] > 1 and 0 < r["entropy"] <= torch.log(torch.tensor(16.0)).item() + 1e-6
        assert r["s_per_sample"] > 0 and r["num"] == 6
    assert rep["target_entropy"] == rows[0]["entropy"]
    assert {(f["steps"]) for f in rep["frontier"]} == {2, 4}
    assert (out / "eval_frontier.png").stat().st_size > 0 and (out / "eval_ppl_vs_nfe.png").stat().st_size > 0
    assert len(list((out / "samples").glob("*.pt"))) == 5
    # a rerun reuses the finished rows: nothing is sampled again
    monkeypatch.setattr(ev, "sample_row", lambda *a, **k: pytest.fail("a cached row was sampled again"))
    main(["eval", str(runs["dit"]), "--steps", "2,4", "--num", "6", "--judge", str(judge), "--temperatures",
          "0.7,1.0", "--reference", "--out", str(out), "--quiet"])
    assert json.loads((out / "eval.json").read_text())["rows"] == rows


def test_eval_ar_run_is_one_row_with_one_call_per_token(setup):
    runs, judge, root = setup
    rep = ev.evaluate(str(runs["ar"]), [8], num=3, judge=str(judge), out=root / "ar-report", progress=False)
    (row,) = rep["rows"]
    assert row["sampler"] == "ar+kv" and row["steps"] == 16 and row["nfe"] == 16 and row["tokens_per_step"] == 1


@pytest.mark.parametrize("args,needle", [
    (["--steps", "8,x"], "comma-separated list"),
    (["--steps", "0"], "step counts must be >= 1"),
    (["--temperatures", "0"], "temperatures must be > 0"),
    (["--judge", "/no/such/judge"], "cannot load judge"),
])
def test_eval_bad_input_is_one_line(setup, args, needle, capsys):
    runs, _, root = setup
    with pytest.raises(SystemExit):
        main(["eval", str(runs["dit"]), "--num", "2", "--out", str(root / "bad"), "--quiet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_frontier_interpolation_on_synthetic_rows():
    rows = [{"model": "m", "steps": 8, "sampler": "ancestral", "temperature": t, "entropy": e, "judge_ppl": p}
            for t, e, p in [(0.8, 4.0, 20.0), (0.9, 4.2, 40.0), (1.0, 4.4, 80.0)]]
    (f,) = ev.frontier_rows(rows, 4.1)
    assert f["judge_ppl_at_target"] == pytest.approx((20.0 * 40.0) ** 0.5)  # midway in log-PPL
    assert ev.frontier_rows(rows, 5.0)[0]["judge_ppl_at_target"] is None  # outside the sweep: no extrapolation
    assert ev.frontier_rows(rows[:1], 4.0) == []  # one temperature is not a frontier
