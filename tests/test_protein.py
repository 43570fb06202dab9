import gzip
import json
import math

import numpy as np
import pytest
import torch

from didi.cli import main
from didi.config import DataConfig
from didi.data import prepare_data
from didi.diffusion import Kept
from didi.errors import DidiError
from didi.evaluation.protein import (
    composition,
    diversity,
    identity,
    js,
    kl,
    length_distance,
    low_complexity_fraction,
    protein_metrics,
    repeat_fraction,
)
from didi.fasta import read_fasta, write_fasta
from didi.methods.mdlm import MDLM
from didi.protein import length_clamp, length_histogram
from didi.tokenizers import amino_tokenizer

FASTA = """>sp|P1|first protein
MKTAYIAK
QRQISFVK
>P2 second
mkvlaagG*

>P3
ACDEFGHIKLMNPQRSTVWY
"""


def test_read_fasta_plain_and_gzip(tmp_path):
    plain, gz = tmp_path / "a.fasta", tmp_path / "b.fa.gz"
    plain.write_text(FASTA)
    gz.write_bytes(gzip.compress(FASTA.encode()))
    for path in (plain, gz):
        recs = list(read_fasta(path))
        assert recs == [("sp|P1|first protein", "MKTAYIAKQRQISFVK"), ("P2 second", "MKVLAAGG"),
                        ("P3", "ACDEFGHIKLMNPQRSTVWY")]


def test_fasta_errors_and_ambiguous_codes(tmp_path):
    bad = tmp_path / "x.fasta"
    bad.write_text("just some text\n>P\nMK\n")
    with pytest.raises(DidiError, match="not a FASTA file"):
        list(read_fasta(bad))
    bad.write_text(">P1\nMKJK\n")
    with pytest.raises(DidiError, match=r"x.fasta:1: residue 'J' in record 'P1'"):
        list(read_fasta(bad))
    amb = tmp_path / "amb.fasta"
    amb.write_text(">A\nMBZUOX\n>B\nMKV\n")
    assert list(read_fasta(amb, "keep"))[0][1] == "MBZUOX"
    assert list(read_fasta(amb, "map"))[0][1] == "MDECKX"
    assert [h for h, _ in read_fasta(amb, "skip")] == ["B"]
    with pytest.raises(DidiError, match="ambiguous code"):
        list(read_fasta(amb, "error"))
    with pytest.raises(DidiError, match="does not exist"):
        list(read_fasta(tmp_path / "missing.fasta"))


def test_write_fasta_roundtrip(tmp_path):
    recs = [("s1 nfe=8", "M" * 130), ("s2", "ACDE")]
    for name in ("o.fasta", "o.fasta.gz"):
        write_fasta(tmp_path / name, recs)
        assert list(read_fasta(tmp_path / name)) == recs
    assert max(len(x) for x in (tmp_path / "o.fasta").read_text().splitlines()) == 60


def test_protein_rows_pad_crop_and_skip(tmp_path):
    f = tmp_path / "p.fasta"
    f.write_text(">a\nMKV\n>b\nACDEFGHIK\n>c\nMM\n")
    tok = amino_tokenizer()
    for policy, expect_rows in (("crop", 3), ("skip", 2)):
        cfg = DataConfig(source=str(f), valid_source=str(f), tokenizer="amino", domain="protein",
                         long_sequences=policy, cache_dir=str(tmp_path / policy))
        train, _ = prepare_data(cfg, tok, 8, show_progress=False)
        rows = train.get(np.arange(len(train)))
        assert len(train) == expect_rows
        assert tok.decode(rows[0].tolist()) == "MKV"
        assert rows[0].tolist() == [tok.bos_id, *tok.encode("MKV"), tok.eos_id] + [tok.pad_id] * 3
        if policy == "crop":  # 9 residues in a row of 8: BOS + the first 7, no EOS
            assert rows[1].tolist() == [tok.bos_id, *tok.encode("ACDEFGH")]
    hist = length_histogram(rows.numpy(), tok)
    assert hist["counts"][3] == 1 and hist["counts"][2] == 1 and sum(hist["counts"]) == 2


def test_length_clamp_places_bos_eos_pad():
    tok = amino_tokenizer()
    c = length_clamp(torch.tensor([3, 7]), 8, tok)
    assert c[0].tolist() == [tok.bos_id, -1, -1, -1, tok.eos_id, tok.pad_id, tok.pad_id, tok.pad_id]
    assert c[1].tolist() == [tok.bos_id] + [-1] * 7  # a cropped-length row: no EOS
    with pytest.raises(DidiError):
        length_clamp(torch.tensor([8]), 8, tok)


def test_mdlm_never_masks_or_scores_the_specials():
    from didi.config import preset

    tok = amino_tokenizer()
    cfg = preset("test")
    cfg.model.vocab_size = tok.model_vocab_size
    method = MDLM(cfg, tok.mask_id, Kept((tok.bos_id, tok.eos_id, tok.pad_id)))
    x = torch.tensor([[tok.bos_id, *tok.encode("MKVL"), tok.eos_id, tok.pad_id, tok.pad_id]])
    seen = {}

    def model(z, sigma):
        seen["z"] = z.clone()
        return torch.zeros(*z.shape, tok.model_vocab_size)

    t = torch.tensor([1.0])  # alpha ~ 0: every maskable token is masked
    terms, count = method.terms(model, x, t, torch.rand(1, 8))
    z = seen["z"][0]
    assert count == 4 and (z[1:5] == tok.mask_id).all()
    assert z[0] == tok.bos_id and z[5] == tok.eos_id and (z[6:] == tok.pad_id).all()
    assert (terms[0, [0, 5, 6, 7]] == 0).all() and (terms[0, 1:5] > 0).all()


def test_protein_train_and_sample_fasta(tmp_path, capsys):
    rng = np.random.default_rng(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    lengths = rng.integers(5, 20, 120)
    train = tmp_path / "train.fasta.gz"
    write_fasta(train, [(f"p{i}", "".join(rng.choice(list(aa), n))) for i, n in enumerate(lengths)])
    run = tmp_path / "run"
    main(["train", "--domain", "protein", "--preset", "test", "--data", str(train), "--out", str(run),
          "--steps", "6", "--set", "model.length=24", "--set", f"data.cache_dir={tmp_path / 'c'}", "--quiet"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["domain"] == "protein" and cfg["data"]["tokenizer"] == "amino"
    hist = json.loads((run / "lengths.json").read_text())
    support = {n for n, c in enumerate(hist["counts"]) if c}
    out = tmp_path / "designs.fasta"
    main(["sample", str(run), "--steps", "8", "--num", "12", "--out", str(out), "--quiet"])
    recs = list(read_fasta(out, "error"))
    assert len(recs) == 12
    assert all(len(s) in support and set(s) <= set(aa) for _, s in recs)  # lengths from training, residues only
    assert len({len(s) for _, s in recs}) > 1  # lengths vary
    assert all(f"length={len(s)}" in h and "nfe=" in h for h, s in recs)
    with pytest.raises(SystemExit):
        main(["sample", str(run), "--num", "2", "--out", str(out), "--quiet"])
    assert "exists" in capsys.readouterr().err


def test_composition_and_divergences():
    p = composition(["AAAC"])
    assert p[0] == 0.75 and p[1] == 0.25 and p.sum() == pytest.approx(1)
    q = composition(["AC"])
    assert kl(p, q) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert js(p, p) == pytest.approx(0) and js(p, q) == pytest.approx(js(q, p)) and js(p, q) <= math.log(2)
    assert kl(q, composition(["AAAA"])) == math.inf


def test_length_distance_identity_diversity_complexity():
    d = length_distance([10, 20], [10, 20])
    assert d == {"length_w1": 0.0, "length_ks": 0.0}
    d = length_distance([10, 10], [15, 15])
    assert d["length_w1"] == pytest.approx(5.0) and d["length_ks"] == 1.0
    assert identity("MKVL", "MKVL") == 1.0 and identity("AAAA", "CCCC") == 0.0
    assert identity("MKVLAG", "MKVLCC") == pytest.approx(4 / 6)
    div = diversity(["MKVL", "MKVL", "ACDE"])
    assert div["unique_frac"] == pytest.approx(2 / 3)
    assert div["mean_pairwise_identity"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert low_complexity_fraction(["A" * 20]) == 1.0
    assert low_complexity_fraction(["ACDEFGHIKLMNPQRSTVWY"]) == 0.0
    assert repeat_fraction(["MKAAAAAV", "MKV"]) == 0.5
    m = protein_metrics(["MKVLAG", "ACDEFG"], ["MKVLAGG", "ACDEFGH"], train=["MKVLAG"])
    assert m["novelty_max_identity_max"] == 1.0 and 0 <= m["composition_js"] <= math.log(2)


def test_protein_eval_with_an_ar_judge_run(tmp_path, capsys):
    rng = np.random.default_rng(1)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    train, valid = tmp_path / "train.fasta", tmp_path / "valid.fasta.gz"
    write_fasta(train, [(f"t{i}", "".join(rng.choice(list(aa), n))) for i, n in enumerate(rng.integers(5, 20, 120))])
    write_fasta(valid, [(f"v{i}", "".join(rng.choice(list(aa), n))) for i, n in enumerate(rng.integers(5, 20, 30))])
    common = ["--preset", "test", "--data", str(train), "--valid-data", str(valid), "--steps", "6",
              "--set", "model.length=24", "--set", f"data.cache_dir={tmp_path / 'c'}", "--quiet"]
    main(["train", "--domain", "protein", "--out", str(tmp_path / "mdlm"), *common])
    main(["train", "--domain", "protein", "--arch", "ar", "--out", str(tmp_path / "judge"), *common])
    with pytest.raises(SystemExit):  # the English judge makes no sense for proteins
        main(["eval", str(tmp_path / "mdlm"), "--num", "2", "--steps", "4", "--quiet"])
    assert "protein judge" in capsys.readouterr().err
    main(["eval", str(tmp_path / "mdlm"), "--domain", "protein", "--judge", str(tmp_path / "judge"), "--steps", "4",
          "--num", "6", "--reference", "--out", str(tmp_path / "rep"), "--quiet"])
    rows = json.loads((tmp_path / "rep" / "eval.json").read_text())["rows"]
    assert [r["sampler"] for r in rows] == ["data", "ancestral"]
    for r in rows:
        assert 1 < r["judge_ppl"] < 1e3 and 0 <= r["composition_js"] <= math.log(2)
        assert 0 < r["unique_frac"] <= 1 and 0 <= r["novelty_max_identity_mean"] <= 1 and r["length_w1"] >= 0
    assert "composition_js" in (tmp_path / "rep" / "eval.md").read_text()
    judge_rows = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert judge_rows["model"]["arch"] == "ar" and judge_rows["data"]["domain"] == "protein"


def test_protein_distillation_keeps_lengths(tmp_path, monkeypatch):
    import didi
    from didi.distill import DistillConfig, distill
    from didi.methods.didi_instruct import DiDiInstruct

    rng = np.random.default_rng(2)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    train = tmp_path / "train.fasta"
    write_fasta(train, [(f"t{i}", "".join(rng.choice(list(aa), n))) for i, n in enumerate(rng.integers(5, 20, 80))])
    main(["train", "--domain", "protein", "--preset", "test", "--data", str(train), "--out", str(tmp_path / "t"),
          "--steps", "6", "--set", "model.length=24", "--set", f"data.cache_dir={tmp_path / 'c'}", "--quiet"])
    # the rollout starts from each real row's layout: BOS, EOS and PAD where the real row has them
    seen = {}
    orig = DiDiInstruct.rollout

    def spy(self, *a, **k):
        out = orig(self, *a, **k)
        seen["init"], seen["x_hat"] = a[6] if len(a) > 6 else k.get("init"), out[0]
        return out

    monkeypatch.setattr(DiDiInstruct, "rollout", spy)
    dcfg = DistillConfig(max_steps=2, batch_size=4, warmup_steps=1, didi=dict(group=2, disc_trainable_blocks=1))
    distill(tmp_path / "t", tmp_path / "d", dcfg, overrides=["train.eval_every=0"], progress=False)
    tok = amino_tokenizer()
    init, x_hat = seen["init"], seen["x_hat"]
    special = (init == tok.bos_id) | (init == tok.eos_id) | (init == tok.pad_id)
    assert special.any() and torch.equal(x_hat[special], init[special])
    assert not (x_hat[~special] == tok.mask_id).any()
    assert torch.equal(init[0], init[1])  # a group shares its real row's length
    distill(tmp_path / "t", tmp_path / "s", DistillConfig(method="sdtt", max_steps=2, batch_size=4, warmup_steps=1,
                                                          sdtt=dict(start_steps=16)), overrides=["train.eval_every=0"],
            progress=False)
    hist = json.loads((tmp_path / "t" / "lengths.json").read_text())
    support = {n for n, c in enumerate(hist["counts"]) if c}
    for student in ("d", "s"):
        assert (tmp_path / student / "lengths.json").is_file()
        out = didi.load(tmp_path / student).sample(num=6, steps=4)
        assert all(len(t) in support and set(t) <= set(aa) for t in out.text)
