import json
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp
from english_corpus import demo_documents
from safetensors.torch import load_file

import didi
from didi import runs
from didi.config import preset
from didi.errors import DidiError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_documents(300)))
    return path


def cfg_for(corpus, tmp_path, *extra):
    return preset("test", [f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", *extra])


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def skip_without_a_cxx_compiler():
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile on a CPU needs a C++ compiler")


def test_training_lowers_the_loss_and_writes_a_run(corpus, tmp_path):
    out = tmp_path / "run"
    didi.train(cfg_for(corpus, tmp_path, "train.max_steps=60", "train.eval_every=30"), out, progress=False)
    val_rows = [m for m in metrics(out) if "val_nelbo" in m]
    assert [m["step"] for m in val_rows] == [30, 60]  # the last step is validated once, not twice
    vals = [m["val_nelbo"] for m in val_rows]
    assert vals[-1] < vals[0]
    for name in ("config.json", "model.safetensors", "checkpoint.pt", "tokenizer/tokenizer.json"):
        assert (out / name).exists(), name
    pipe = didi.load(out)
    s = pipe.sample(num=2, steps=8)
    assert s.tokens.shape == (2, 32) and len(s.text) == 2 and not (s.tokens == pipe.tokenizer.mask_id).any()
    skip_without_a_cxx_compiler()
    fast = didi.load(out).compile()  # `didi sample --compile`: the same network, compiled
    z, sigma = torch.randint(0, pipe.tokenizer.mask_id + 1, (2, 32)), torch.rand(2)
    with torch.no_grad():
        assert torch.allclose(fast.model(z, sigma), pipe.model(z, sigma), atol=1e-4)
    f = fast.sample(num=2, steps=8)
    assert f.tokens.shape == (2, 32) and not (f.tokens == pipe.tokenizer.mask_id).any()


def test_train_compile_gives_the_same_steps_and_saves_plain_weights(corpus, tmp_path):
    """`train.compile=true` (torch.compile of the trained network) is a speed option: the same losses step by step,
    and weights saved under the module's own names, so the run loads and samples as any other."""
    skip_without_a_cxx_compiler()
    runs_ = {}
    for c in ("false", "true"):
        out = tmp_path / f"c-{c}"
        didi.train(cfg_for(corpus, tmp_path, "train.max_steps=3", "train.eval_every=0", "train.log_every=1",
                           f"train.compile={c}"), out, progress=False)
        runs_[c] = out
    plain, fast = ([m["loss"] for m in metrics(runs_[c]) if "loss" in m] for c in ("false", "true"))
    assert len(plain) == len(fast) == 3 and all(abs(a - b) < 1e-3 for a, b in zip(plain, fast))
    a, b = load_file(runs_["false"] / "model.safetensors"), load_file(runs_["true"] / "model.safetensors")
    assert sorted(a) == sorted(b) and not any("_orig_mod" in k for k in b)
    assert didi.load(runs_["true"]).sample(num=1, steps=4).tokens.shape == (1, 32)


def test_cpu_bf16_autocasts_on_a_cpu_and_still_lowers_the_loss(corpus, tmp_path):
    from didi.trainer import Context, Dist

    ctx = Context({}, "cpu", Dist(), True, 1, cpu_bf16=True)
    with ctx.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Context({}, "cpu", Dist(), True, 1).autocast():  # the default: float32 on a CPU
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    out = tmp_path / "bf16"
    didi.train(cfg_for(corpus, tmp_path, "train.max_steps=40", "train.eval_every=20", "train.cpu_bf16=true"), out,
               progress=False)
    vals = [m["val_nelbo"] for m in metrics(out) if "val_nelbo" in m]
    assert len(vals) == 2 and vals[-1] < vals[0]
    assert all(v.dtype == torch.float32 for v in load_file(out / "model.safetensors").values())


def test_resume_is_exact(corpus, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    extra = ("train.max_steps=20", "train.save_every=0", "train.eval_every=10")
    didi.train(cfg_for(corpus, tmp_path, *extra), straight, progress=False)
    didi.train(cfg_for(corpus, tmp_path, *extra), resumed, until_step=10, progress=False)
    assert torch.load(resumed / "checkpoint.pt", weights_only=False)["step"] == 10
    didi.train(cfg_for(corpus, tmp_path, *extra), resumed, resume=True, progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(straight / "checkpoint.pt", weights_only=False)["parts"]["model"]["module"]
    cb = torch.load(resumed / "checkpoint.pt", weights_only=False)["parts"]["model"]["module"]
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    didi.train(cfg_for(corpus, tmp_path, "train.max_steps=2"), out, progress=False)
    with pytest.raises(DidiError, match="already holds a run"):
        didi.train(cfg_for(corpus, tmp_path, "train.max_steps=2"), out, progress=False)
    with pytest.raises(DidiError, match="does not exist"):
        didi.train(cfg_for(corpus, tmp_path), tmp_path / "nothing", resume=True, progress=False)


def test_nan_loss_stops_with_the_step(corpus, tmp_path, monkeypatch):
    import didi.methods.mdlm as mdlm

    real = mdlm.nelbo_terms
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        terms = real(*args, **kw)
        return terms * float("nan") if calls["n"] == 4 else terms

    monkeypatch.setattr(mdlm, "nelbo_terms", poisoned)
    with pytest.raises(DidiError, match="at step 3"):
        didi.train(cfg_for(corpus, tmp_path, "train.max_steps=10", "train.eval_every=0"), tmp_path / "r",
                   progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg_dict, out):
    import os

    from didi.config import RunConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    didi.train(RunConfig.from_dict(cfg_dict), out, progress=False)
    torch.distributed.destroy_process_group()


def _protein_cfg(tmp_path, *extra):
    from didi.fasta import write_fasta

    rng = torch.Generator().manual_seed(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    seqs = ["".join(aa[int(j)] for j in torch.randint(0, 20, (int(n),), generator=rng))
            for n in torch.randint(4, 22, (200,), generator=rng)]  # lengths vary: scored counts differ per rank
    fasta = tmp_path / "prot.fasta"
    write_fasta(fasta, [(f"p{i}", s) for i, s in enumerate(seqs)])
    return preset("test", ["data.domain=protein", "data.tokenizer=amino", f"data.source={fasta}", "model.length=24",
                           f"data.cache_dir={tmp_path / 'cache'}", *extra])


@pytest.mark.parametrize("domain", ["text", "protein"])
def test_two_process_gloo_ddp_matches_single_process(corpus, tmp_path, domain):
    extra = ("train.max_steps=4", "train.eval_every=0", "train.save_every=0", "train.ema=0")
    cfg = cfg_for(corpus, tmp_path, *extra) if domain == "text" else _protein_cfg(tmp_path, *extra)
    single = tmp_path / "single"
    didi.train(cfg, single, progress=False)
    ddp = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(ddp)), nprocs=2)
    a, b = load_file(single / "model.safetensors"), load_file(ddp / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    torch.manual_seed(cfg.train.seed)
    init = runs.build_model(cfg).state_dict()  # the weights both runs started from
    assert set(init) == set(a)
    assert any((a[k] - init[k]).abs().max() > 1e-4 for k in a)  # four steps moved the weights


def test_text_rows_run_never_masks_the_first_position_and_samples_whole_texts(tmp_path):
    from didi.diffusion import Kept, LogLinearSchedule, nelbo_terms

    docs = [f"tiny story {i} ends here." for i in range(40)]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = preset("test", [f"data.source={src}", "data.layout=rows", f"data.cache_dir={tmp_path / 'c'}",
                          "train.max_steps=6", "train.eval_every=0", "model.length=16"])
    didi.train(cfg, tmp_path / "run", progress=False)
    pipe = didi.load(tmp_path / "run")
    eos = pipe.tokenizer.eos_id
    out = pipe.sample(num=4, steps=4, seed=0)
    assert (out.tokens[:, 0] == eos).all()  # clamped, as in training
    assert all("<|endoftext|>" not in t for t in out.text)  # read from position 1 up to the next EOS
    kept = Kept.for_run(pipe.config.data, pipe.tokenizer)
    ordinary = torch.tensor([i for i in range(pipe.tokenizer.vocab_size) if i not in (eos, pipe.tokenizer.mask_id)])
    x = ordinary[torch.randint(0, len(ordinary), (3, 16))]
    x[:, 0] = eos
    assert kept(x)[:, 0].all() and not kept(x)[:, 1:].any()
    noise = torch.ones(3, 16).masked_fill(kept(x), 0.0)  # kept positions draw 0: never masked
    t = torch.ones(3)  # everything but the kept position is masked
    terms = nelbo_terms(pipe.model, x, t, noise, LogLinearSchedule(), pipe.tokenizer.mask_id)
    assert (terms[:, 0] == 0).all() and (terms[:, 1:] > 0).all()


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.mark.skipif(not __import__("pathlib").Path("/proc").is_dir(), reason="needs /proc to find the workers")
def test_torchrun_with_a_killed_process_stops_and_resumes_exactly(corpus, tmp_path):
    """kill -9 one of two torchrun workers: the launcher stops the other, nothing hangs, and --resume (two
    processes again) ends on the weights of a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def launch(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "didi", "train", "--preset", "test", "--data", str(corpus), "--out", str(out),
               "--quiet", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.eval_every=0",
               "--set", "train.save_every=10", "--set", "train.log_every=1", "--steps", "200", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    full = launch(tmp_path / "full")
    assert full.wait(timeout=300) == 0, full.stderr.read()[-2000:]
    victim_run = tmp_path / "killed"
    proc = launch(victim_run)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a checkpoint and some steps past it
        rows = metrics(victim_run) if (victim_run / "metrics.jsonl").is_file() else []
        if (victim_run / "checkpoint.pt").is_file() and rows and rows[-1]["step"] >= 25:
            break
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2 and proc.poll() is None, "the run finished before it could be killed"
    os.kill(workers[1], signal.SIGKILL)
    assert proc.wait(timeout=120) != 0  # the launcher noticed and stopped the other worker: no hang
    assert not any(_alive(w) for w in workers)
    resumed = launch(victim_run, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(victim_run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in metrics(victim_run) if "loss" in r]
    assert steps == list(range(1, 201))  # every step logged once: rows past the checkpoint were dropped


def _alive(pid: int) -> bool:
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    """Files written whole then renamed (configs, weights, checkpoints) get the mode open() would give them under the
    process's umask, not the owner-only mode of the temporary file they were written to."""
    from didi import fileio

    fileio.atomic_write_text(tmp_path / "a.json", "{}")
    (tmp_path / "b.json").write_text("{}")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777
