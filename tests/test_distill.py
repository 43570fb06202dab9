import json
import math
import shutil
import socket
from dataclasses import asdict

import pytest
import torch
import torch.multiprocessing as mp
from english_corpus import demo_documents
from safetensors.torch import load_file

import didi
from didi.config import preset
from didi.diffusion import LogLinearSchedule
from didi.distill import DistillConfig, distill, distill_preset
from didi.errors import DidiError
from didi.guidance import h_schedule, rgas_sample, tilt_logits
from didi.methods.didi_instruct import (
    DiDiInstructConfig,
    discriminator_loss,
    group_normalize,
    policy_gradient_loss,
    time_weight,
)
from didi.nn.discriminator import Discriminator
from didi.nn.dit import DIT

# -- the estimator on a toy problem where the KL is exact -------------------------------------------------


def exact_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(p_logits || target) of factorized categoricals [L, V], summed over positions."""
    lp, lt = logits.log_softmax(-1), target.log_softmax(-1)
    return (lp.exp() * (lp - lt)).sum()


def draw(logits: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(logits.softmax(-1), n, replacement=True, generator=gen).T  # [n, L]


def seq_logp(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, x.T).T.sum(-1)  # [n]


def test_policy_gradient_has_the_sign_and_scale_of_the_exact_kl_gradient():
    gen = torch.Generator().manual_seed(0)
    L, V, n = 3, 5, 200_000
    theta = torch.randn(L, V, generator=gen)
    target = torch.randn(L, V, generator=gen)
    x = draw(theta, n, gen)
    theta_ = theta.clone().requires_grad_(True)
    with torch.no_grad():
        reward = seq_logp(target, x) - seq_logp(theta, x)  # log q_real / q_student, the discriminator's optimum
    loss = policy_gradient_loss(seq_logp(theta_, x), reward - reward.mean())
    (g_est,) = torch.autograd.grad(loss, theta_)
    theta_ = theta.clone().requires_grad_(True)
    (g_true,) = torch.autograd.grad(exact_kl(theta_, target), theta_)
    cos = torch.nn.functional.cosine_similarity(g_est.flatten(), g_true.flatten(), dim=0)
    assert cos > 0.99
    assert torch.allclose(g_est, g_true, atol=0.03 * g_true.abs().max())


def test_grouped_policy_gradient_lowers_the_exact_kl():
    gen = torch.Generator().manual_seed(1)
    L, V, B, G = 4, 6, 64, 4
    theta = torch.zeros(L, V, requires_grad=True)
    target = 2 * torch.randn(L, V, generator=gen)
    opt = torch.optim.Adam([theta], lr=0.05)
    start = float(exact_kl(theta.detach(), target))
    for _ in range(150):
        x = draw(theta.detach(), B, gen).repeat_interleave(G, 0)
        x = torch.cat([x[:, :1], draw(theta.detach(), B * G, gen)[:, 1:]], 1)  # groups share the first token
        with torch.no_grad():
            r = seq_logp(target, x) - seq_logp(theta, x)
        loss = policy_gradient_loss(seq_logp(theta, x), group_normalize(r, G), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = float(exact_kl(theta.detach(), target))
    assert end < 0.3 * start, (start, end)


def test_group_normalization_statistics():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 100.0])
    a = group_normalize(r, 4, clip=3.0)
    g = a.reshape(3, 4)
    assert torch.allclose(g[0].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(g[0].std(unbiased=False), torch.tensor(1.0), atol=1e-5)
    assert torch.all(g[1] == 0)  # no spread: no signal
    assert g[2, 3] == pytest.approx(math.sqrt(3))  # (100 - 25) / 43.3
    assert torch.all(group_normalize(torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 1e6]), 8, clip=2.0).abs() <= 2.0)
    valid = torch.tensor([True, True, False, True])
    a = group_normalize(torch.tensor([1.0, 3.0, 99.0, 2.0]), 4, valid=valid)
    assert a[2] == 0 and torch.allclose(a[valid].mean(), torch.tensor(0.0), atol=1e-6)


def test_time_weight_is_clamped_inverse_time():
    s = LogLinearSchedule(1e-3)
    w = time_weight(torch.tensor([0.001, 0.5, 0.999]), s)
    # log-linear: 1 - alpha = (1 - eps) t and -alpha' = 1 - eps, so w = 1 / t before the clamp
    assert w[0] == 10.0 and w[1] == pytest.approx(2.0, rel=1e-5) and w[2] == pytest.approx(1 / 0.999, rel=1e-5)


# -- the discriminator ---------------------------------------------------------------------------------


def tiny_dit(vocab=9, length=8, seed=0, time_conditioning=False):
    torch.manual_seed(seed)
    cfg = preset("test").model
    cfg.vocab_size, cfg.length, cfg.time_conditioning = vocab, length, time_conditioning
    return DIT(cfg)


def test_discriminator_logit_approaches_the_true_log_ratio():
    """Sequences repeat one token v drawn from p_real or p_fake; with half the positions masked, the optimal
    per-token logit at a masked position is log p_real(v) / p_fake(v) (v is visible elsewhere)."""
    V, L, mask = 4, 8, 4
    p_real = torch.tensor([0.4, 0.3, 0.2, 0.1])
    p_fake = torch.tensor([0.1, 0.2, 0.3, 0.4])
    disc = Discriminator.from_teacher(tiny_dit(V + 1, L), trainable_blocks=2)
    opt = torch.optim.Adam([p for p in disc.parameters() if p.requires_grad], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    positions = torch.arange(L)

    def batch(p, n=64):
        v = torch.multinomial(p, n, replacement=True, generator=gen)
        z = v[:, None].repeat(1, L)
        hide = positions[None] % 2 == torch.randint(0, 2, (n, 1), generator=gen)
        return z.masked_fill(hide, mask), hide

    sigma = torch.zeros(128)
    for _ in range(300):
        (zr, mr), (zf, mf) = batch(p_real), batch(p_fake)
        logits = disc(torch.cat([zr, zf]), sigma)
        loss = discriminator_loss(logits[:64], logits[64:], mr, mf, smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    disc.eval()
    with torch.no_grad():
        z = torch.arange(V)[:, None].repeat(1, L)
        z[:, 0::2] = mask
        got = disc(z, torch.zeros(V))[:, 0]
    truth = (p_real / p_fake).log()
    assert (got - truth).abs().max() < 0.35, (got, truth)


def test_label_smoothing_moves_the_optimum_toward_zero():
    logits = torch.zeros(2, 1, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    ones = torch.ones(1, 1, dtype=torch.bool)
    for _ in range(500):
        loss = discriminator_loss(logits[:1], logits[1:], ones, ones, smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logits[0].item() == pytest.approx(math.log(9), abs=1e-2)  # log(0.9 / 0.1)
    assert logits[1].item() == pytest.approx(-math.log(9), abs=1e-2)


# -- reward-guided sampling ----------------------------------------------------------------------------


class LinearScore(torch.nn.Module):
    """A stand-in discriminator: per-token logit = <input distribution, w>; counts rows it evaluates."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w, self.rows, self.calls = w, 0, 0

    def forward(self, z, sigma):
        self.rows += z.shape[0]
        self.calls += 1
        x = z if z.is_floating_point() else torch.nn.functional.one_hot(z, self.w.numel()).float()
        return x @ self.w


class Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, z, sigma):
        return torch.zeros(*z.shape, self.vocab)


def test_tilting_moves_probability_toward_higher_discriminator_score():
    V, mask = 6, 5
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 0.0])
    z = torch.tensor([[mask, 2, mask, mask]])
    logits = torch.randn(1, 4, V, generator=torch.Generator().manual_seed(0))
    new = tilt_logits(LinearScore(w), z, logits, torch.zeros(1), h=0.5, mask_id=mask)
    masked = z[0] == mask

    def expected_score(lg):
        p = lg[..., :mask].softmax(-1)
        return (p * w[:mask]).sum(-1)

    assert torch.all(expected_score(new[0][masked]) > expected_score(logits[0][masked]))
    assert torch.equal(new[0][~masked], logits[0][~masked])


def test_reranking_calls_the_discriminator_m_times_per_step_and_prefers_high_scores():
    V, mask, L, B, T, M = 6, 5, 16, 8, 4, 4
    w = torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0, 0.0])
    disc = LinearScore(w)
    out = rgas_sample(Uniform(V), disc, B, L, T, mask, rho=1.0, candidates=M,
                      generator=torch.Generator().manual_seed(0))
    extra = out.total_evals - out.nfe
    assert disc.calls <= T and disc.rows == int(extra.sum()) and disc.rows % M == 0
    assert torch.all(extra == M * out.nfe)  # every step of a row with masks left: 1 student + M discriminator
    plain = rgas_sample(Uniform(V), LinearScore(torch.zeros(V)), B, L, T, mask, rho=1.0, candidates=M,
                        generator=torch.Generator().manual_seed(0))
    assert (out.tokens == 4).float().mean() > (plain.tokens == 4).float().mean() + 0.05
    assert not (out.tokens == mask).any()


def test_tilting_steps_cost_a_forward_and_a_backward():
    V, mask, L, B, T = 6, 5, 16, 4, 6
    disc = LinearScore(torch.arange(V).float())
    out = rgas_sample(Uniform(V), disc, B, L, T, mask, rho=0.5, candidates=3, h0=1.0, h1=2.0,
                      generator=torch.Generator().manual_seed(0))
    k = int(T * 0.5)
    assert h_schedule(k, 1.0, 2.0) == [1.0, 1.5, 2.0]
    # rows that still had masks at every step: k tilting steps (2 each) + (T - k) re-ranking steps (3 each)
    full = out.nfe == T
    assert full.any() and torch.all((out.total_evals - out.nfe)[full] == 2 * k + 3 * (T - k))


# -- distillation end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    corpus = root / "stories.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_documents(300)))
    cfg = preset("test", [f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", "train.max_steps=30",
                          "train.eval_every=0", "model.length=16"])
    didi.train(cfg, root / "run", progress=False)
    return root / "run"


def small_dcfg(**kw) -> DistillConfig:
    """A test-sized DistillConfig; `didi=dict(...)` adds to the DiDi-Instruct section (kept only for that method)."""
    base = dict(max_steps=4, batch_size=4, warmup_steps=1, student_lr=1e-3, ema=0.5)
    didi = {} if kw.get("method", "didi-instruct") != "didi-instruct" else dict(group=2, disc_lr=1e-3,
                                                                                 disc_trainable_blocks=1)
    return DistillConfig(**{**base, **kw, "didi": {**didi, **kw.get("didi", {})}})


def test_distill_resume_is_exact_and_student_samples_without_teacher(teacher, tmp_path):
    extra = ["train.eval_every=2", "train.save_every=0"]
    a, b = tmp_path / "a", tmp_path / "b"
    distill(teacher, a, small_dcfg(), overrides=extra, progress=False)
    distill(teacher, b, small_dcfg(), overrides=extra, until_step=2, progress=False)
    distill(None, b, resume=True, progress=False)
    for name in ("model.safetensors", "discriminator.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    ca = torch.load(a / "checkpoint.pt", weights_only=False)
    cb = torch.load(b / "checkpoint.pt", weights_only=False)
    for part in ("student", "discriminator"):
        assert all(torch.equal(v, cb["parts"][part]["module"][k]) for k, v in ca["parts"][part]["module"].items())
        assert ca["parts"][part]["optimizer"]["state"].keys() == cb["parts"][part]["optimizer"]["state"].keys()
    log = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in log if "disc_loss" in r]
    assert train_rows and all(math.isfinite(r["disc_loss"]) and math.isfinite(r["reward_mean"]) for r in train_rows)
    # the student was changed by distillation
    wt = load_file(teacher / "model.safetensors")
    ws = load_file(a / "model.safetensors")
    assert any(not torch.equal(wt[k], ws[k]) for k in wt)
    # ... and samples with the teacher gone
    moved = tmp_path / "teacher-gone"
    shutil.copytree(a, moved)
    shutil.rmtree(a)
    pipe = didi.load(moved)
    s = pipe.sample(num=3, steps=4)
    assert s.tokens.shape == (3, 16) and not (s.tokens == pipe.tokenizer.mask_id).any()
    g = pipe.sample(num=3, steps=4, guided=True)
    assert torch.all(g.total_evals > g.nfe)


def _ddp_distill_worker(rank, world, port, teacher, out, dcfg, dump):
    import os

    from didi.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train = Trainer.train

    def train_and_dump(self, until_step=None):  # keep each rank's final weights and buffers
        result = train(self, until_step)
        torch.save({n: p.spec.module.state_dict() for n, p in self.parts.items()}, f"{dump}.rank{rank}.pt")
        return result

    Trainer.train = train_and_dump
    distill(teacher, out, dcfg, overrides=["train.eval_every=0"], progress=False)
    torch.distributed.destroy_process_group()


def test_two_process_gloo_distillation_keeps_ranks_in_step(teacher, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, dump = tmp_path / "ddp", str(tmp_path / "w")
    mp.spawn(_ddp_distill_worker, args=(2, port, str(teacher), str(out), small_dcfg(max_steps=3), dump), nprocs=2)
    r0, r1 = (torch.load(f"{dump}.rank{r}.pt") for r in (0, 1))
    for part in ("student", "discriminator"):  # DDP kept the copies identical (spectral-norm buffers included)
        assert r0[part].keys() == r1[part].keys()
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part]), part
    wt = load_file(teacher / "model.safetensors")
    ws = load_file(out / "model.safetensors")
    assert any(not torch.equal(wt[k], ws[k]) for k in wt)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) and math.isfinite(r["reward_mean"]) for r in rows if "loss" in r)


def test_every_part_can_be_switched_off(teacher, tmp_path):
    off = small_dcfg(max_steps=2, didi=dict(score_decomposition=False, coupled_time=False, time_weight=False,
                                            group_norm=False, kl_beta=0.0, entropy_beta=0.0, real="teacher",
                                            teacher_steps=2, importance_weight=True, final_fill="argmax",
                                            student_steps=3))
    result = distill(teacher, tmp_path / "off", off, overrides=["train.eval_every=0"], progress=False)
    assert math.isfinite(result["loss"])
    result = distill(teacher, tmp_path / "three", small_dcfg(max_steps=2, didi=dict(student_steps=3,
                                                                                    disc_only_steps=1)),
                     overrides=["train.eval_every=0"], progress=False)
    assert math.isfinite(result["loss"])


def distill_twice_and_resume(teacher, tmp_path, dcfg, extra):
    """One run of dcfg straight through (a), one stopped at step 2 and resumed (b); asserts the weights equal."""
    a, b = tmp_path / "a", tmp_path / "b"
    distill(teacher, a, dcfg, overrides=extra, progress=False)
    distill(teacher, b, dcfg, overrides=extra, until_step=2, progress=False)
    distill(None, b, resume=True, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    return a, wa


def test_path_rewards_on_the_sampler_grid_train_and_resume_exactly(teacher, tmp_path):
    dcfg = small_dcfg(didi=dict(reward_states="path", rollout_grid="sampler", student_steps=3))
    extra = ["train.eval_every=0", "train.save_every=0", "train.log_every=1"]
    a, _ = distill_twice_and_resume(teacher, tmp_path, dcfg, extra)
    rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "disc_loss" in r]
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) and math.isfinite(r["reward_mean"]) for r in rows)
    assert any(r["pg"] != 0 for r in rows)


def test_path_advantages_credit_each_step_with_its_reward_to_go():
    from didi.methods.didi_instruct import DiDiInstruct

    class Ctx:  # the two hooks `_path_rewards` uses, with a discriminator that scores a row by its token sum
        parts = {"discriminator": None}

        @staticmethod
        def autocast():
            import contextlib
            return contextlib.nullcontext()

        @staticmethod
        def all_mean(x):
            return x

    cfg = preset("test")
    d = DistillConfig(didi=dict(group=2, group_norm=False, reward_states="path"))
    m = DiDiInstruct(cfg, d, mask_id=9, teacher=torch.nn.Identity())
    m._disc_update = lambda *a, **k: {}
    rewards = {}
    m._rewards = lambda ctx, z, sigma, counted: rewards.setdefault("r", torch.tensor(
        [1.0, 3.0, 0.0, 2.0, 5.0, 5.0])[:, None].expand(-1, 4))  # [k*N, L] with k=3 states, N=2 rows: state-major
    states = [torch.full((2, 4), 9), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)]
    grid = torch.tensor([[1.0, 0.6, 0.3, 0.001]] * 2)
    adv, _ = m._path_rewards(Ctx(), states, torch.ones(2, 4, dtype=torch.long), grid, torch.ones(2, 4).long(),
                             torch.rand(2, 4), torch.rand(2))
    r = torch.tensor([[1.0, 0.0, 5.0], [3.0, 2.0, 5.0]])  # per row, per state
    togo = torch.tensor([[6.0, 5.0, 5.0], [10.0, 7.0, 5.0]])  # reward-to-go of each step's decisions
    assert torch.allclose(r.flip(1).cumsum(1).flip(1), togo)
    assert torch.allclose(adv, togo - togo.mean(0))  # group_norm off: minus the batch mean, per step



def test_distill_bad_input(teacher, tmp_path):
    with pytest.raises(DidiError, match="does not exist"):
        distill(tmp_path / "nope", tmp_path / "o", small_dcfg(), progress=False)
    with pytest.raises(DidiError, match="real must be"):
        distill(teacher, tmp_path / "o", small_dcfg(didi=dict(real="teachers")), progress=False)
    with pytest.raises(DidiError, match="reward_states must be"):
        distill(teacher, tmp_path / "o", small_dcfg(didi=dict(reward_states="all")), progress=False)
    with pytest.raises(DidiError, match="rollout_grid must be"):
        distill(teacher, tmp_path / "o", small_dcfg(didi=dict(rollout_grid="cosine")), progress=False)
    with pytest.raises(DidiError, match="already holds a run"):
        distill(teacher, teacher, small_dcfg(), progress=False)
    with pytest.raises(DidiError, match="train.lr"):
        distill(teacher, tmp_path / "o2", small_dcfg(), overrides=["train.lr=1"], progress=False)


def test_cli_distill_resume_and_guided_sample(teacher, tmp_path, capsys):
    from didi.cli import main

    out = tmp_path / "cli-student"
    small = ["--steps", "3", "--batch-size", "4", "--group", "2", "--set", "distill.warmup_steps=1",
             "--set", "distill.didi.disc_trainable_blocks=1", "--set", "train.eval_every=0", "--quiet"]
    main(["distill", "--teacher", str(teacher), "--out", str(out), *small])
    saved = json.loads((out / "config.json").read_text())["distill"]
    assert saved["max_steps"] == 3 and saved["didi"]["group"] == 2 and saved["didi"]["disc_trainable_blocks"] == 1
    assert saved["student_lr"] == 1e-4  # the tiny preset, chosen for a tiny-class teacher
    # resuming with a different distill setting is refused in one line; the same settings are accepted
    with pytest.raises(SystemExit):
        main(["distill", "--out", str(out), "--resume", "--group", "4", "--quiet"])
    assert "changed: didi.group" in capsys.readouterr().err
    main(["distill", "--out", str(out), "--resume", "--quiet"])
    assert "step 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "x"), "--set", "distill.widgets=1"])
    assert "unknown config key 'distill.widgets'" in capsys.readouterr().err

    samples = tmp_path / "s.jsonl"
    main(["sample", str(out), "--steps", "4", "--num", "2", "--guided", "--candidates", "3", "--out", str(samples),
          "--quiet"])
    report = capsys.readouterr().out
    assert "student NFE mean" in report and "total network evaluations mean" in report
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(rows) == 2 and all(r["guided"] and r["total_evals"] > r["nfe"] for r in rows)


# -- a student with its own randomness (distill.student_noise_dim) ---------------------------------------------


def random_dit() -> DIT:
    """A tiny DiT with every weight random (a fresh DiT's output layer and modulations are zero)."""
    m = tiny_dit().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def test_noise_input_changes_the_output_per_row_and_none_is_the_zero_vector():
    m = random_dit()
    z = torch.full((3, 8), 8)
    sigma = torch.zeros(3)
    plain = m(z, sigma)
    with pytest.raises(ValueError, match="no noise input"):
        m(z, sigma, torch.zeros(3, 4))
    m.add_noise_input(4, 0.5, torch.Generator().manual_seed(0))
    assert m.config.noise_dim == 4 and m.noise_map.weight.shape == (m.config.cond_dim, 4)
    assert torch.allclose(m(z, sigma), plain) and torch.allclose(m(z, sigma, torch.zeros(3, 4)), plain)
    xi = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    out = m(z, sigma, xi)
    assert not torch.allclose(out[0], out[1])  # the same input, different noise: different predictions
    assert torch.allclose(out[2], m(z[2:], sigma[2:], xi[2:])[0], atol=1e-6)


def test_split_denoiser_gives_each_row_its_own_noise_whatever_rows_are_evaluated():
    from didi.sampling import RowCache, SplitDenoiser

    m = random_dit().add_noise_input(4, 0.5, torch.Generator().manual_seed(0))
    xi = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    den = SplitDenoiser(m, noise=xi)
    z = torch.randint(0, 8, (5, 8))
    z[:, ::2] = 8
    full = den(z, torch.zeros(5))
    rows = torch.tensor([1, 3])
    assert torch.allclose(den(z[rows], torch.zeros(2), rows), full[rows], atol=1e-6)
    # a row cache that evaluates only the rows with masks tells the denoiser which rows they are
    z[[0, 2, 4]] = 1
    rc = RowCache(den, 5, 8, LogLinearSchedule(), cache=True, device="cpu", split=True)
    rc.update(z, 1.0)
    assert torch.allclose(rc.at(z == 8), full[z == 8], atol=1e-5)
    with pytest.raises(ValueError, match="noise for 5 rows"):
        den(z[:2], torch.zeros(2))


def test_noise_student_distils_resumes_exactly_and_samples_from_the_seed(teacher, tmp_path):
    dcfg = small_dcfg(student_noise_dim=4, student_noise_init=0.5, didi=dict(reward_states="path",
                                                                             rollout_grid="sampler", student_steps=3))
    extra = ["train.eval_every=2", "train.save_every=0"]
    a, b = tmp_path / "a", tmp_path / "b"
    distill(teacher, a, dcfg, overrides=extra, progress=False)
    distill(teacher, b, dcfg, overrides=extra, until_step=2, progress=False)
    distill(None, b, resume=True, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert "noise_map.weight" in wa and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "config.json").read_text())["model"]["noise_dim"] == 4
    rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("noise_map_norm", 0) > 0 for r in rows)
    pipe = didi.load(a)
    s1, s2 = pipe.sample(num=6, steps=4, seed=3), pipe.sample(num=6, steps=4, seed=3)
    assert torch.equal(s1.tokens, s2.tokens)  # the noise comes from the sampling seed
    assert not (s1.tokens == pipe.tokenizer.mask_id).any() and torch.all(s1.nfe <= 4)
    g = pipe.sample(num=2, steps=4, guided=True)
    assert g.tokens.shape == (2, 16)
    with pytest.raises(DidiError, match="noise input"):
        from didi.interop import export

        export(a, tmp_path / "exported")
    with pytest.raises(DidiError, match="SDTT matches per-token marginals and has no code input"):
        DistillConfig(method="sdtt", student_noise_dim=4).validate()


def test_group_noise_shared_gives_a_group_one_code_and_a_baseline_per_code(teacher, tmp_path):
    """group_noise 'shared': the G rollouts of a group see one xi (groups differ); 'independent' keeps the draws of
    before (every row its own xi, the same numbers); within_group_share measures what a per-group baseline leaves."""
    from didi.methods.didi_instruct import DiDiInstruct, within_group_share

    cfg = preset("test")
    codes = {}
    for mode in ("independent", "shared"):
        d = DistillConfig(student_noise_dim=4, didi=dict(group=3, group_noise=mode))
        m = DiDiInstruct(cfg, d, mask_id=9, teacher=torch.nn.Identity())
        codes[mode] = m.draw(torch.Generator().manual_seed(0), 4, 8, 0, 1, "cpu")["noise"]  # 4 groups of 3 rows
    shared, indep = codes["shared"].reshape(4, 3, 4), codes["independent"].reshape(4, 3, 4)
    assert torch.equal(shared, shared[:, :1].expand(-1, 3, -1))  # one code per group
    assert len({tuple(g[0].tolist()) for g in shared}) == 4  # different codes across groups
    assert len({tuple(r.tolist()) for r in codes["independent"]}) == 12
    want = torch.randn(12, 4, generator=_after_draws(torch.Generator().manual_seed(0), 4 * 3, 8))
    assert torch.equal(indep.reshape(12, 4), want)  # the draws of runs made before the option
    r = torch.tensor([1.0, 1.0, 5.0, 5.0])
    assert float(within_group_share(r, 2)) == 0.0 and abs(float(within_group_share(r, 4)) - 1.0) < 1e-6
    assert 0 < float(within_group_share(torch.tensor([0.0, 2.0, 4.0, 4.0]), 2)) < 1
    # a run with shared codes trains, logs the share, and resumes exactly
    dcfg = small_dcfg(student_noise_dim=4, student_noise_init=0.5,
                      didi=dict(reward_states="path", rollout_grid="sampler", student_steps=3, group_noise="shared",
                                reward_source="teacher", reward_repeats=2))
    a, _ = distill_twice_and_resume(teacher, tmp_path, dcfg, ["train.eval_every=0", "train.save_every=0"])
    rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    shares = [r["reward_within_share"] for r in rows if "reward_within_share" in r]
    assert shares and all(0.0 <= v <= 1.0 + 1e-6 for v in shares)
    for bad, match in ((dict(group_noise="shared"), "needs a student with a noise input"),
                       (dict(group_noise="same"), "group_noise must be")):
        with pytest.raises(DidiError, match=match):
            DistillConfig(didi=bad).validate()


def _after_draws(gen: torch.Generator, n: int, length: int) -> torch.Generator:
    """`gen` advanced past what DiDiInstruct.draw takes before the student's noise."""
    torch.randint(0, 2**62, (1,), generator=gen)
    torch.randint(0, 2**62, (1,), generator=gen)
    for _ in range(2):
        torch.rand(n, length, generator=gen)
    torch.rand(n, generator=gen)
    return gen


def test_rollout_log_probs_are_those_the_loss_recomputes_and_entropy_reward_trains(teacher, tmp_path):
    from didi.diffusion import masked_log_probs
    from didi.methods.didi_instruct import DiDiInstruct

    m = random_dit()
    cfg = preset("test")
    cfg.model = m.config
    method = DiDiInstruct(cfg, DistillConfig(didi=dict(student_steps=3, rollout_grid="sampler")), 8, m)
    n = 6
    grid = method.times(torch.zeros(n))
    x_hat, states, decided, lp = method.rollout(m, n, 8, grid, torch.Generator().manual_seed(0), "cpu")
    assert lp.shape == (n, 3) and torch.all(lp <= 0)
    with torch.no_grad():
        for j, (z, dec) in enumerate(zip(states, decided)):
            logp = masked_log_probs(m(z, method.schedule.sigma(grid[:, j])), 8)
            picked = logp.gather(-1, x_hat[..., None]).squeeze(-1)
            assert torch.allclose((picked * dec).sum(1), lp[:, j], atol=1e-4)
    assert torch.stack(decided).sum(0).eq(1).all()  # every position decided exactly once
    dcfg = small_dcfg(max_steps=3, didi=dict(reward_states="path", rollout_grid="sampler", student_steps=3,
                                             entropy_reward=0.1))
    result = distill(teacher, tmp_path / "ent", dcfg, overrides=["train.eval_every=0", "train.log_every=1"],
                     progress=False)
    assert math.isfinite(result["loss"]) and result["surprisal"] > 0
    result = distill(teacher, tmp_path / "ent-final", small_dcfg(max_steps=2, didi=dict(entropy_reward=0.1)),
                     overrides=["train.eval_every=0", "train.log_every=1"], progress=False)
    assert math.isfinite(result["loss"]) and result["surprisal"] > 0


def moved_copy(teacher, init, scale: float) -> dict:
    """A copy of the teacher run at `init` whose weights are moved by Gaussian noise of std `scale`."""
    from didi.fileio import load_weights, save_weights

    shutil.copytree(teacher, init)
    gen = torch.Generator().manual_seed(0)
    moved = {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in load_weights(init / "model.safetensors").items()}
    save_weights(moved, init / "model.safetensors")
    return moved


def test_student_init_starts_the_student_from_another_run_and_refuses_a_mismatch(teacher, tmp_path):
    from didi.fileio import load_weights

    init = tmp_path / "init"
    moved = moved_copy(teacher, init, 0.01)
    # only the discriminator trains, so the saved student is exactly where it started
    distill(teacher, tmp_path / "s", small_dcfg(max_steps=2, student_init=str(init), didi=dict(disc_only_steps=2)),
            overrides=["train.eval_every=0"], progress=False)
    got = load_file(tmp_path / "s" / "model.safetensors")
    assert all(torch.equal(got[k], moved[k]) for k in moved)
    tw = load_weights(teacher / "model.safetensors")
    assert not all(torch.equal(got[k], tw[k]) for k in tw)
    saved = json.loads((tmp_path / "s" / "config.json").read_text())["distill"]
    assert saved["student_init"] == str(init.resolve())

    cfg = json.loads((init / "config.json").read_text())
    cfg["model"]["length"] += 1
    (init / "config.json").write_text(json.dumps(cfg))
    distill(None, tmp_path / "s", resume=True, progress=False)  # the checkpoint holds the student: init not read
    with pytest.raises(DidiError, match="model differs from the teacher's .*length"):
        distill(teacher, tmp_path / "s2", small_dcfg(student_init=str(init)), progress=False)
    with pytest.raises(DidiError, match="does not exist"):
        distill(teacher, tmp_path / "s3", small_dcfg(student_init=str(tmp_path / "nope")), progress=False)
    with pytest.raises(DidiError, match="SDTT starts from its teacher"):
        distill(teacher, tmp_path / "s4", small_dcfg(method="sdtt", student_init=str(teacher)), progress=False)


def test_latent_student_learns_to_read_its_code_resumes_exactly_and_starts_a_didi_run(teacher, tmp_path):
    """method 'latent': the encoder's code moves off the prior (KL > 0) and the student reads it (two codes give
    different predictions); resume is exact; the result starts a DiDi run with its noise map; bad configs refuse."""
    from didi.fileio import load_weights

    lat = dict(method="latent", student_noise_dim=4, max_steps=8, batch_size=4, warmup_steps=1, student_lr=3e-3,
               ema=0.0, latent=dict(beta=0.1))
    extra = ["train.eval_every=4", "train.save_every=0"]
    a, b = tmp_path / "a", tmp_path / "b"
    distill(teacher, a, DistillConfig(**lat), overrides=extra, progress=False)
    distill(teacher, b, DistillConfig(**lat), overrides=extra, until_step=4, progress=False)
    distill(None, b, resume=True, progress=False)
    for name in ("model.safetensors", "encoder.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    log = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in log if "kl" in r]
    assert 0 < rows[0]["kl"] < rows[-1]["kl"]  # q starts as the prior (KL 0), then carries more and more
    assert any("val_nelbo_prior_xi" in r for r in log)
    run = didi.load(a)
    assert run.config.model.noise_dim == 4
    x = torch.full((2, 16), run.tokenizer.mask_id)
    sigma = torch.full((2,), 5.0)
    with torch.no_grad():
        p0 = run.model(x, sigma, torch.zeros(2, 4))
        p1 = run.model(x, sigma, torch.full((2, 4), 2.0))
    assert not torch.allclose(p0, p1)
    # a DiDi run started from it keeps its noise map (only the discriminator trains here)
    distill(teacher, tmp_path / "d", small_dcfg(max_steps=2, student_noise_dim=4, student_init=str(a),
                                                didi=dict(disc_only_steps=2)),
            overrides=["train.eval_every=0"], progress=False)
    got, want = load_file(tmp_path / "d" / "model.safetensors"), load_weights(a / "model.safetensors")
    assert "noise_map.weight" in got and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(DidiError, match="noise_dim"):
        distill(teacher, tmp_path / "d2", small_dcfg(student_init=str(a)), progress=False)
    with pytest.raises(DidiError, match="needs student_noise_dim"):
        DistillConfig(method="latent").validate()
    with pytest.raises(DidiError, match="distill.latent.encoder_blocks = 99: the teacher has only 2 blocks"):
        distill(teacher, tmp_path / "l2", DistillConfig(**{**lat, "latent": dict(encoder_blocks=99)}), progress=False)


def test_latent_time_power_moves_training_times_toward_all_masked():
    from didi.methods.latent import latent_times

    eps = 1e-3
    t = eps + (1 - eps) * (torch.arange(10_000, dtype=torch.float64) + 0.5) / 10_000
    assert torch.equal(latent_times(t, eps, 1.0), t)
    moved = latent_times(t, eps, 2.0)
    assert moved.min() >= eps and moved.max() <= 1 and bool((moved.diff() > 0).all())
    assert abs(float(moved.mean()) - (eps + (1 - eps) * 2 / 3)) < 1e-3  # E[u^(1/2)] = 2/3
    assert float((moved > 0.9).double().mean()) == pytest.approx(1 - 0.9 ** 2, abs=2e-3)
    with pytest.raises(DidiError, match="distill.latent.time_power = 0"):
        DistillConfig(method="latent", student_noise_dim=4, latent=dict(time_power=0)).validate()


def test_options_removed_as_never_helping_load_when_off_and_are_refused_when_used(teacher, tmp_path, capsys):
    """Configs saved before the removal of options measured never to help (per-position code map, noise-map lr,
    token credit, batch-scope normalization; the grid alias "uniform") load when they hold the value that meant
    "off" (the alias as its name); a run that used one is refused in one line."""
    from didi.cli import main
    from didi.config import RunConfig

    sections = ("didi", "sdtt", "latent", "dmmd")
    flat = {k: v for k, v in asdict(DistillConfig()).items() if k not in sections[:3]}  # saved flat before sections
    flat.update(asdict(DiDiInstructConfig()), sdtt_start_steps=1024, sdtt_end_steps=8, sdtt_divergence="reverse_kl",
                latent_beta=1.0, latent_encoder_blocks=2, latent_time_power=1.0)
    assert DistillConfig.from_dict(flat) == DistillConfig()
    old = {**flat, "student_noise_positions": False, "noise_lr_mult": 1.0,
           "reward_credit": "sequence", "norm_scope": "group", "rollout_grid": "uniform"}
    assert DistillConfig.from_dict(old).didi.rollout_grid == "sampler"
    run = {**asdict(RunConfig()), "distill": old}
    run["model"]["noise_positions"] = False
    (tmp_path / "config.json").write_text(json.dumps(run))
    assert RunConfig.load(tmp_path / "config.json").model.noise_dim == 0
    for key, used in (("reward_credit", "token"), ("norm_scope", "batch"), ("noise_lr_mult", 10.0)):
        with pytest.raises(DidiError, match=f"distill.{key} = .*was removed"):
            DistillConfig.from_dict({**old, key: used})
    run["model"]["noise_positions"] = True
    (tmp_path / "config.json").write_text(json.dumps(run))
    with pytest.raises(DidiError, match="model.noise_positions = True: this option was removed"):
        RunConfig.load(tmp_path / "config.json")
    with pytest.raises(SystemExit):
        main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "o"), "--set",
              "distill.norm_scope=batch"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "norm_scope" in err and "Traceback" not in err


def test_kl_reference_init_anchors_the_kl_to_the_starting_student_and_resumes_exactly(teacher, tmp_path):
    """kl_reference 'init': at the first student update the student is its own reference (KL 0 up to dropout),
    where the teacher reference sees the distance the init moved; resume re-reads the init and is exact."""
    init = tmp_path / "init"
    moved_copy(teacher, init, 0.05)
    extra = ["train.eval_every=0", "train.save_every=0"]
    first_kl = {}
    for ref in ("teacher", "init"):
        out = tmp_path / f"ref-{ref}"
        distill(teacher, out, small_dcfg(max_steps=1, student_init=str(init), didi=dict(disc_only_steps=0,
                                                                                        kl_reference=ref)),
                overrides=extra, progress=False)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        first_kl[ref] = next(r["kl"] for r in rows if "kl" in r)
    assert first_kl["init"] < 1e-6 < first_kl["teacher"], first_kl
    a, b = tmp_path / "a", tmp_path / "b"
    dcfg = small_dcfg(student_init=str(init), didi=dict(kl_reference="init", kl_beta=1.0))
    distill(teacher, a, dcfg, overrides=extra, progress=False)
    distill(teacher, b, dcfg, overrides=extra, until_step=2, progress=False)
    distill(None, b, resume=True, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(DidiError, match="kl_reference must be"):
        small_dcfg(didi=dict(kl_reference="student")).validate()
    with pytest.raises(DidiError, match=r"distill.didi.kl_reference: a setting of method 'didi-instruct', which this "
                                        r"run \(method 'sdtt'\) does not use"):
        small_dcfg(method="sdtt", didi=dict(kl_reference="init")).validate()


def test_teacher_evidence_is_the_nelbo_bound_stratified_in_time():
    """reward_source 'teacher': the reward -NELBO(x), t stratified per row, has the expectation of the NELBO with
    independent uniform t, is a bound (<= 0), and kept positions add nothing."""
    from didi.diffusion import nelbo_terms, sample_times
    from didi.methods.didi_instruct import teacher_evidence

    m = random_dit()
    sched = LogLinearSchedule(1e-3)
    x = torch.randint(0, 8, (3, 8), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    strat = torch.stack([teacher_evidence(m, x, sched, 8, 1e-3, 4, gen) for _ in range(300)])  # [300, 3]
    plain = []
    with torch.no_grad():
        for _ in range(300):
            t = sample_times(12, 1e-3, False, gen)
            terms = nelbo_terms(m, x.repeat_interleave(4, 0), t, torch.rand(12, 8, generator=gen), sched, 8)
            plain.append(-terms.double().sum(1).reshape(3, 4).mean(1))
    plain = torch.stack(plain).float()
    se = (strat.var(0) / 300 + plain.var(0) / 300).sqrt()
    assert torch.all((strat.mean(0) - plain.mean(0)).abs() < 4 * se), (strat.mean(0), plain.mean(0))
    assert torch.all(strat <= 0)
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[:, 1:] = True  # only position 0 may be masked: the evidence is that position's term alone
    one = teacher_evidence(m, x, sched, 8, 1e-3, 4, torch.Generator().manual_seed(2), keep)
    assert torch.all(one <= 0) and torch.all(one > strat.mean(0))
    assert torch.all(teacher_evidence(m, x, sched, 8, 1e-3, 4, gen, torch.ones_like(keep)) == 0)


def test_teacher_reward_trains_without_the_discriminator_and_resumes_exactly(teacher, tmp_path):
    extra = ["train.eval_every=0", "train.save_every=0", "train.log_every=1"]
    dcfg = small_dcfg(didi=dict(reward_source="teacher", reward_repeats=2, entropy_reward=1.0, reward_states="path",
                                rollout_grid="sampler", student_steps=3, disc_only_steps=2))
    a, wa = distill_twice_and_resume(teacher, tmp_path, dcfg, extra)
    rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines() if "reward_mean" in x]
    assert len(rows) == 4 and all("disc_loss" not in r and r["surprisal"] > 0 and r["teacher_nelbo"] > 0 for r in rows)
    assert all(r["grad_norm"] > 0 for r in rows)  # disc_only_steps does not hold the student back: no discriminator
    wt = load_file(teacher / "model.safetensors")
    assert any(not torch.equal(wt[k], wa[k]) for k in wt)
    assert not (a / "discriminator.safetensors").exists() and not (a / "discriminator.json").exists()
    assert "discriminator" not in torch.load(a / "checkpoint.pt", weights_only=False)["parts"]
    pipe = didi.load(a)  # it samples; guided sampling is refused: it has no discriminator
    assert pipe.sample(num=2, steps=4).tokens.shape == (2, 16)
    with pytest.raises(DidiError, match="reward_source=teacher: it has no discriminator"):
        pipe.sample(num=2, steps=4, guided=True)
    with pytest.raises(DidiError, match="reward_source must be"):
        small_dcfg(didi=dict(reward_source="oracle")).validate()
    with pytest.raises(DidiError, match="reward_repeats"):
        small_dcfg(didi=dict(reward_source="teacher", reward_repeats=0)).validate()


def spy_on_draws(monkeypatch, cls, key: str) -> list:
    """Record what `cls.draw` returns under `key` at every call (the codes a method's rollouts draw)."""
    seen, real_draw = [], cls.draw

    def spy(self, *a, **kw):
        out = real_draw(self, *a, **kw)
        seen.append(out[key])
        return out

    monkeypatch.setattr(cls, "draw", spy)
    return seen


def test_noise_prior_fitted_to_a_latent_student_drives_sampling_and_didi_rollouts(teacher, tmp_path, capsys,
                                                                                   monkeypatch):
    """`didi prior` writes a mixture fitted to the latent student's codes; sampling draws xi from it (or from N(0, I)
    with noise_prior "normal"); a DiDi run with noise_prior "init" draws its rollouts' xi from it and keeps a copy."""
    from didi.api import load
    from didi.cli import main
    from didi.evaluation.evaluate import evaluate
    from didi.methods.didi_instruct import DiDiInstruct
    from didi.prior import FILE, NoisePrior, fingerprint, load_prior

    lat = tmp_path / "lat"
    distill(teacher, lat, DistillConfig(method="latent", student_noise_dim=4, max_steps=4, batch_size=4,
                                        warmup_steps=1, student_lr=3e-3, ema=0.0, latent=dict(beta=0.1)),
            overrides=["train.eval_every=0", "train.save_every=0"], progress=False)
    with pytest.raises(SystemExit):
        main(["prior", str(teacher)])
    assert "no noise input" in capsys.readouterr().err
    main(["prior", str(lat), "--components", "2", "--texts", "40"])
    assert "2 components from the codes of 40 training texts" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["prior", str(lat)])
    assert "exists; pass --overwrite" in capsys.readouterr().err
    prior = load_prior(lat)
    assert prior.means.shape == (2, 4) and prior.info["encoder"] == str(lat)

    pipe, plain = load(lat), load(lat, noise_prior="normal")
    assert pipe.prior() is not None and plain.prior() is None
    got = pipe.denoiser(6, torch.Generator().manual_seed(5)).noise
    assert torch.equal(got, prior.sample(6, torch.Generator().manual_seed(5)))
    assert torch.equal(plain.denoiser(6, torch.Generator().manual_seed(5)).noise,
                       torch.randn(6, 4, generator=torch.Generator().manual_seed(5)))
    report = evaluate(str(lat), [2], num=4, judge="grammar:stories", out=tmp_path / "ev", progress=False)
    assert report["rows"][0]["model"] == "lat+prior" and report["rows"][0]["nfe_max"] <= 2
    assert json.loads(report["rows"][0]["key"])[-1] == fingerprint(lat)  # a refitted prior is new rows, not the cache
    plain_report = evaluate(str(lat), [2], num=4, judge="grammar:stories", out=tmp_path / "ev", noise_prior="normal",
                            progress=False)
    assert plain_report["rows"][0]["model"] == "lat"

    # the DiDi stage: its rollouts draw from the init's prior (here one far from N(0, I)), the run keeps a copy, and
    # a resume reads that copy, even after the init's prior was replaced
    NoisePrior(torch.full((1, 4), 10.0), torch.full((1, 4), 1e-6), torch.zeros(1), {}).save(lat)
    seen = spy_on_draws(monkeypatch, DiDiInstruct, "noise")
    dcfg = small_dcfg(max_steps=2, student_noise_dim=4, student_init=str(lat), noise_prior="init")
    extra = ["train.eval_every=0", "train.save_every=0"]
    distill(teacher, tmp_path / "e", dcfg, overrides=extra, progress=False)
    assert seen and all(torch.allclose(n, torch.full_like(n, 10.0), atol=0.01) for n in seen)
    assert torch.equal(load_prior(tmp_path / "e").means, torch.full((1, 4), 10.0))
    distill(teacher, tmp_path / "f", dcfg, overrides=extra, until_step=1, progress=False)
    prior.save(lat)  # the init's prior changes between the two halves
    distill(None, tmp_path / "f", resume=True, progress=False)
    we, wf = load_file(tmp_path / "e" / "model.safetensors"), load_file(tmp_path / "f" / "model.safetensors")
    assert all(torch.equal(we[k], wf[k]) for k in we)
    with pytest.raises(DidiError, match="noise_prior='init' needs student_init"):
        small_dcfg(student_noise_dim=4, noise_prior="init").validate()
    with pytest.raises(DidiError, match="noise_prior is a DiDi-Instruct and D-MMD option"):
        DistillConfig(method="latent", student_noise_dim=4, noise_prior="init").validate()
    (lat / FILE).unlink()
    with pytest.raises(DidiError, match="has no noise_prior.safetensors"):
        distill(teacher, tmp_path / "d2", dcfg, progress=False)
    assert not (tmp_path / "d2").exists()  # refused before anything was written


def test_named_recipe_presets_are_the_measured_commands_and_the_user_set_wins(teacher, tmp_path, capsys):
    """`latent-lang` + `lang-stage` are the reference-language recipe's commands (E48-E49: preset lang plus nine
    --set) under two names, less what does nothing there (the discriminator's settings: the reward is the teacher's;
    a group's shared code, measured to change nothing); lang-stage's run settings (power-3 grid, snapshots) are
    saved, a user's --set wins, and without --student-init it is one clear error."""
    from didi.cli import main
    from didi.distill import PRESET_RUN_OVERRIDES
    from didi.prior import load_prior

    stage_didi = ("kl_reference=init", "kl_beta=15", "reward_source=teacher", "group_noise=shared")
    measured = distill_preset("lang", ["max_steps=300", "student_noise_dim=16", "noise_prior=init",
                                       *(f"didi.{o}" for o in stage_didi)])
    stage = distill_preset("lang-stage")
    assert asdict(stage)["didi"].keys() == asdict(measured)["didi"].keys()
    differ = {k for k, v in asdict(stage)["didi"].items() if asdict(measured)["didi"][k] != v}
    assert differ == {"group_noise", "disc_lr", "disc_only_steps", "disc_trainable_blocks"}
    assert {k: v for k, v in asdict(stage).items() if k != "didi"} == {k: v for k, v in asdict(measured).items()
                                                                        if k != "didi"}
    assert stage.didi.group_noise == "independent" and stage.didi.reward_source == "teacher"
    assert PRESET_RUN_OVERRIDES["lang-stage"] == ["diffusion.grid_power=3", "train.snapshot_every=50"]
    lat_cfg = distill_preset("latent-lang")
    assert (lat_cfg.latent.beta, lat_cfg.latent.time_power, lat_cfg.student_lr) == (0.01, 2.0, 6e-4)

    lat = tmp_path / "lat"
    distill(teacher, lat, distill_preset("latent-lang", ["max_steps=2", "batch_size=4", "warmup_steps=1"]),
            overrides=["train.eval_every=0", "train.save_every=0"], progress=False)
    main(["prior", str(lat), "--components", "0", "--texts", "16"])
    assert load_prior(lat).means.shape == (16, 16)
    base = ["distill", "--teacher", str(teacher), "--preset", "lang-stage", "--steps", "1", "--quiet",
            "--set", "train.eval_every=0", "--set", "train.save_every=0"]
    with pytest.raises(SystemExit):
        main(base + ["--out", str(tmp_path / "no-init")])
    assert "needs student_init (--student-init" in capsys.readouterr().err
    assert not (tmp_path / "no-init").exists()
    main(base + ["--out", str(tmp_path / "stage"), "--student-init", str(lat)])
    saved = json.loads((tmp_path / "stage" / "config.json").read_text())
    assert saved["diffusion"]["grid_power"] == 3.0 and saved["train"]["snapshot_every"] == 50
    assert saved["distill"]["noise_prior"] == "init" and saved["distill"]["didi"]["reward_source"] == "teacher"
    main(base + ["--out", str(tmp_path / "stage2"), "--student-init", str(lat), "--set", "diffusion.grid_power=2"])
    assert json.loads((tmp_path / "stage2" / "config.json").read_text())["diffusion"]["grid_power"] == 2.0


# -- D-MMD (method "dmmd") ---------------------------------------------------------------------------------


def small_dmmd(*extra: str) -> DistillConfig:
    return distill_preset("dmmd-tiny", ["max_steps=4", "batch_size=4", "warmup_steps=1", "dmmd.steps=4", *extra])


@pytest.mark.parametrize("states", ["data", "student"])
def test_dmmd_distils_resumes_exactly_and_samples_without_teacher(teacher, tmp_path, states):
    extra = ["train.eval_every=2", "train.save_every=0", "train.log_every=1"]
    a, wa = distill_twice_and_resume(teacher, tmp_path, small_dmmd(f"dmmd.states={states}", "dmmd.aux_updates=2"),
                                     extra)
    aux_a, aux_b = load_file(a / "auxiliary.safetensors"), load_file(tmp_path / "b" / "auxiliary.safetensors")
    assert all(torch.equal(aux_a[k], aux_b[k]) for k in aux_a)
    wt = load_file(teacher / "model.safetensors")
    assert any(not torch.equal(wt[k], wa[k]) for k in wt)  # the student moved
    assert any(not torch.equal(wt[k], aux_a[k]) for k in wt)  # ... and so did the auxiliary
    assert not (a / "discriminator.safetensors").exists() and not (a / "discriminator.json").exists()
    log = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in log if "aux_loss" in r]
    assert len(rows) == 4 and all(math.isfinite(r[k]) for r in rows for k in ("loss", "aux_loss", "gap"))
    assert any("val_nelbo" in r for r in log)
    saved = json.loads((a / "config.json").read_text())["distill"]
    assert saved["method"] == "dmmd" and saved["dmmd"]["states"] == states and saved["dmmd"]["aux_updates"] == 2
    shutil.rmtree(tmp_path / "b")
    s = didi.load(a).sample(num=3, steps=4)
    assert s.tokens.shape == (3, 16) and int(s.nfe.max()) <= 4


def test_dmmd_on_two_gloo_processes_keeps_student_and_auxiliary_in_step(teacher, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, dump = tmp_path / "ddp", str(tmp_path / "w")
    mp.spawn(_ddp_distill_worker, args=(2, port, str(teacher), str(out), small_dmmd("max_steps=3"), dump), nprocs=2)
    r0, r1 = (torch.load(f"{dump}.rank{r}.pt") for r in (0, 1))
    for part in ("student", "auxiliary"):
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part]), part
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["gap"]) for r in rows if "gap" in r)


def test_cli_dmmd_picks_its_preset_from_the_teacher_and_takes_section_overrides(teacher, tmp_path, capsys):
    from didi.cli import main

    base = ["distill", "--method", "dmmd", "--teacher", str(teacher), "--steps", "2", "--batch-size", "4", "--quiet",
            "--set", "train.eval_every=0"]
    main(base + ["--out", str(tmp_path / "a"), "--set", "distill.dmmd.states=student", "--set",
                 "distill.dmmd.weight=elbo"])
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["distill"]
    assert saved["method"] == "dmmd" and saved["max_steps"] == 2 and saved["dmmd"]["steps"] == 8  # dmmd-tiny
    assert (saved["dmmd"]["states"], saved["dmmd"]["weight"]) == ("student", "elbo")
    with pytest.raises(SystemExit):
        main(["distill", "--out", str(tmp_path / "a"), "--resume", "--set", "distill.dmmd.states=data", "--quiet"])
    assert "cannot resume with a different distill config (changed: dmmd.states)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--out", str(tmp_path / "b"), "--set", "distill.dmmd.states=teacher"])
    err = capsys.readouterr().err
    assert "distill.dmmd.states must be 'data' or 'student'" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_dmmd_from_a_latent_student_keeps_its_code_input_and_draws_codes_from_its_prior(teacher, tmp_path,
                                                                                        monkeypatch):
    from didi.methods.dmmd import DMMD
    from didi.prior import NoisePrior

    lat = tmp_path / "lat"
    distill(teacher, lat, DistillConfig(method="latent", student_noise_dim=4, max_steps=2, batch_size=4,
                                        warmup_steps=1, student_lr=3e-3, ema=0.0, latent=dict(beta=0.1)),
            overrides=["train.eval_every=0", "train.save_every=0"], progress=False)
    NoisePrior(torch.full((1, 4), 10.0), torch.full((1, 4), 1e-6), torch.zeros(1), {}).save(lat)
    seen = spy_on_draws(monkeypatch, DMMD, "code")
    distill(teacher, tmp_path / "d", small_dmmd("max_steps=2", f"student_init={lat}"),
            overrides=["train.eval_every=0"], progress=False)
    saved = json.loads((tmp_path / "d" / "config.json").read_text())
    assert saved["model"]["noise_dim"] == 4 and saved["distill"]["noise_prior"] == "init"
    assert seen and all(torch.allclose(c, torch.full_like(c, 10.0), atol=0.01) for c in seen)
    got = load_file(tmp_path / "d" / "model.safetensors")
    aux = load_file(tmp_path / "d" / "auxiliary.safetensors")
    assert "noise_map.weight" in got and "noise_map.weight" not in aux  # the auxiliary reads no code by default


@pytest.mark.parametrize("method", ["didi-instruct", "sdtt", "dmmd"])
def test_students_validation_nelbo_is_scored_like_the_teachers(teacher, method):
    """On rows whose first position is never masked (text rows), a student's val_nelbo leaves that position out as
    the teacher's does: a student that is still the teacher reports the teacher's number."""
    from didi.diffusion import Kept
    from didi.methods.didi_instruct import DiDiInstruct
    from didi.methods.dmmd import DMMD
    from didi.methods.mdlm import MDLM
    from didi.methods.sdtt import SDTT

    run = didi.load(teacher)
    cfg, mask, kept = run.config, run.tokenizer.mask_id, Kept(first=True)
    batches = [torch.randint(0, mask, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    want = MDLM(cfg, mask, kept).validate(run.model, batches, 0)
    dcfg = small_dcfg(method=method, max_steps=8) if method != "dmmd" else small_dmmd()
    cls = {"didi-instruct": DiDiInstruct, "sdtt": SDTT, "dmmd": DMMD}[method]
    got = cls(cfg, dcfg, mask, run.model, kept).validate(run.model, batches, 0)
    assert got["val_nelbo"] == want["val_nelbo"] and got["val_tokens"] == 3 * 4 * 15


def test_each_method_has_its_own_config_section():
    """A method's settings live in its section (given as a dict or a dataclass, type-checked); a key from before the
    sections is refused naming its new place, a setting of another method's section is refused, and a config saved
    flat loads into the sections."""
    assert DistillConfig(method="sdtt", sdtt=dict(start_steps=16)).sdtt.start_steps == 16
    with pytest.raises(DidiError, match='distill.sdtt.start_steps is "x", where a value of type int belongs'):
        DistillConfig(method="sdtt", sdtt=dict(start_steps="x"))
    with pytest.raises(DidiError, match="distill.kl_beta is now distill.didi.kl_beta"):
        distill_preset("tiny", ["kl_beta=1"])
    with pytest.raises(DidiError, match="distill.latent_beta is now distill.latent.beta"):
        distill_preset("latent-lang", ["distill.latent_beta=0.1"])
    assert distill_preset("tiny", ["didi.kl_beta=1"]).didi.kl_beta == 1.0
    with pytest.raises(DidiError, match="distill.didi.group: a setting of method 'didi-instruct', which this run "
                                        r"\(method 'dmmd'\) does not use"):
        distill_preset("dmmd-tiny", ["didi.group=8"]).validate()
    saved = {"method": "sdtt", "max_steps": 8, "sdtt_start_steps": 16, "sdtt_end_steps": 4, "kl_beta": 1.0}
    loaded = DistillConfig.from_dict(saved)
    assert (loaded.sdtt.start_steps, loaded.sdtt.end_steps, loaded.max_steps) == (16, 4, 8)
    loaded.validate()  # the DiDi key such a run saved but never read is dropped, so it still resumes
    assert loaded.didi == DistillConfig().didi
