import json
import math

import pytest
import torch
from english_corpus import demo_documents
from safetensors.torch import load_file

import didi
from didi.config import preset
from didi.distill import DistillConfig, distill
from didi.errors import DidiError
from didi.methods.sdtt import divergence, round_schedule


def test_round_schedule_halves_the_steps_each_round():
    rounds = round_schedule(1024, 8, 70_000)
    assert len(rounds) == 7
    assert [r["teacher_steps"] for r in rounds] == [1024, 512, 256, 128, 64, 32, 16]
    assert [r["student_steps"] for r in rounds] == [512, 256, 128, 64, 32, 16, 8]
    assert [r["first_step"] for r in rounds] == [10_000 * k for k in range(7)]
    assert rounds[-1]["last_step"] == 70_000
    uneven = round_schedule(64, 8, 10)  # 3 rounds over 10 steps: 4, 4, 2
    assert [(r["first_step"], r["last_step"]) for r in uneven] == [(0, 4), (4, 8), (8, 10)]
    for bad in [(100, 8, 10), (8, 8, 10), (64, 8, 2)]:
        with pytest.raises(DidiError):
            round_schedule(*bad)


def test_divergences_are_zero_only_at_equality_and_point_the_right_way():
    p = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0]]), -1)
    q = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0]]), -1)
    assert divergence(p, p, "reverse_kl").abs().item() < 1e-6 and divergence(p, p, "kl").abs().item() < 1e-6
    rkl = (p.exp() * (p - q)).sum().item()
    assert divergence(p, q, "reverse_kl").item() == pytest.approx(rkl)  # student p || target q
    assert divergence(p, q, "kl").item() == pytest.approx((q.exp() * (q - p)).sum().item())
    with pytest.raises(DidiError, match="divergence"):
        divergence(p, q, "js")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdtt-teacher")
    corpus = root / "stories.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_documents(300)))
    cfg = preset("test", [f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", "train.max_steps=30",
                          "train.eval_every=0", "model.length=16"])
    didi.train(cfg, root / "run", progress=False)
    return root / "run"


def sdtt_cfg(**kw) -> DistillConfig:
    base = dict(method="sdtt", max_steps=6, batch_size=4, warmup_steps=1, student_lr=1e-3, ema=0.5,
                sdtt=dict(start_steps=32, end_steps=8))
    return DistillConfig(**{**base, **kw})


def test_sdtt_rounds_swap_the_teacher_and_resume_is_exact(teacher, tmp_path):
    extra = ["train.eval_every=0", "train.save_every=0", "train.log_every=1"]
    a, b = tmp_path / "a", tmp_path / "b"
    distill(teacher, a, sdtt_cfg(), overrides=extra, progress=False)
    distill(teacher, b, sdtt_cfg(), overrides=extra, until_step=4, progress=False)  # stops inside round 1
    distill(None, b, resume=True, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines() if "round" in x]
    assert [r["round"] for r in log] == [0, 0, 0, 1, 1, 1]  # 2 rounds (32 -> 16 -> 8) over 6 steps
    assert all(math.isfinite(r["loss"]) and r["loss"] >= 0 for r in log)
    assert not (a / "discriminator.safetensors").exists()
    ck = torch.load(a / "checkpoint.pt", weights_only=False)
    assert ck["method"]["round"] == 1 and ck["method"]["teacher"] is not None
    # the round-1 teacher is the student as it was when round 1 began, not the MDLM teacher
    wt = load_file(teacher / "model.safetensors")
    assert any(not torch.equal(wt[k], ck["method"]["teacher"][k]) for k in wt)
    s = didi.load(a).sample(num=2, steps=8)
    assert s.tokens.shape == (2, 16) and s.nfe.max() <= 8


def test_sdtt_lowers_its_loss_on_a_fixed_round(teacher, tmp_path):
    # one round (16 -> 8) over 30 steps: the distillation loss must go down
    cfg = sdtt_cfg(max_steps=30, student_lr=3e-3, warmup_steps=0, sdtt=dict(start_steps=16))
    distill(teacher, tmp_path / "s", cfg, overrides=["train.eval_every=0", "train.log_every=1"], progress=False)
    loss = [json.loads(x)["loss"] for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines() if "round" in x]
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5


def test_sdtt_bad_config(teacher, tmp_path):
    with pytest.raises(DidiError, match="power of two"):
        distill(teacher, tmp_path / "o", sdtt_cfg(sdtt=dict(start_steps=24)), progress=False)
    with pytest.raises(DidiError, match="distill.sdtt.divergence must be"):
        distill(teacher, tmp_path / "o", sdtt_cfg(sdtt=dict(divergence="js")), progress=False)
    with pytest.raises(DidiError, match="method must be"):
        distill(teacher, tmp_path / "o", sdtt_cfg(method="ddim"), progress=False)


def test_cli_distill_method_sdtt(teacher, tmp_path):
    from didi.cli import main

    out = tmp_path / "cli-sdtt"
    main(["distill", "--method", "sdtt", "--teacher", str(teacher), "--out", str(out), "--steps", "3",
          "--batch-size", "2", "--set", "distill.sdtt.start_steps=64", "--set", "train.eval_every=0", "--quiet"])
    saved = json.loads((out / "config.json").read_text())["distill"]
    assert saved["method"] == "sdtt" and saved["max_steps"] == 3 and saved["student_lr"] == 1e-4
