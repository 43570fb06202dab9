"""Interop with the official checkpoint layouts, on small checkpoints built here (the hub is not reachable)."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import didi
from didi import interop, runs
from didi.config import ModelConfig
from didi.errors import DidiError
from didi.nn.discriminator import Discriminator
from didi.nn.dit import DIT
from didi.tokenizers import amino_tokenizer

GPT2_VOCAB = 50258
LENGTH = 16


class HParams:  # stands for the omegaconf config a Lightning checkpoint pickles in hyper_parameters
    def __init__(self):
        self.model = {"hidden_size": 32}


class AttrDict(dict):  # Lightning's AttributeDict: a dict subclass, which weights_only loading refuses
    pass


class TokenizerLike:  # MDLM pickles its transformers tokenizer in hyper_parameters (save_hyperparameters())
    def __init__(self, marker: Path):
        self.vocab = collections.defaultdict(int, {"hello": 1})
        self.added = AddedList(["<mask>"])
        self.hook = Trap(marker)


class AddedList(list):
    pass


class Trap:
    """Unpickling this would create `marker` if the loader called what the file names; it must not."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def tiny(vocab: int = GPT2_VOCAB, seed: int = 0, time_conditioning: bool = False) -> DIT:
    """A tiny DiT with every tensor random and non-zero (the zero-initialised layers included)."""
    cfg = ModelConfig(vocab_size=vocab, hidden_dim=32, cond_dim=16, n_blocks=2, n_heads=2, length=LENGTH,
                      time_conditioning=time_conditioning)
    torch.manual_seed(seed)
    model = DIT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.eval()


def hf_config(vocab: int = GPT2_VOCAB) -> dict:
    return {"architectures": ["MDLM"], "model_type": "mdlm", "hidden_dim": 32, "cond_dim": 16, "n_blocks": 2,
            "n_heads": 2, "model_length": LENGTH, "vocab_size": vocab, "time_conditioning": False, "dropout": 0.1}


def inputs(vocab: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (2, LENGTH), generator=g)
    x[:, ::3] = vocab - 1  # some mask tokens
    return x, torch.rand(2, generator=g)


def logits(model, vocab: int) -> torch.Tensor:
    x, sigma = inputs(vocab)
    with torch.no_grad():
        return model.eval()(x, sigma)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    if not torch.equal(a, b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def write_hf(d: Path, model: DIT, dtype=torch.float32, config: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file({f"backbone.{k}": v.to(dtype).contiguous() for k, v in model.state_dict().items()},
              str(d / "model.safetensors"))
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


def rounded(model: DIT, dtype) -> DIT:
    ref = tiny(model.config.vocab_size)
    ref.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return ref.eval()


def source_meta(run_dir: Path) -> dict:
    return json.loads((run_dir / interop.SOURCE_META).read_text())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_hf_layout_roundtrip_logits(tmp_path, dtype):
    model = tiny()
    src = write_hf(tmp_path / "mdlm-owt", model, dtype, hf_config())
    assert interop.detect_layout(src) == "mdlm-hf"
    out = interop.convert(str(src), tmp_path / "run")
    run = runs.load_run(out)
    assert run.config.data.tokenizer == "gpt2" and run.tokenizer.model_vocab_size == GPT2_VOCAB
    assert (run.config.model.n_heads, run.config.model.length, run.config.model.time_conditioning) == (2, LENGTH,
                                                                                                        False)
    ref = model if dtype == torch.float32 else rounded(model, dtype)
    assert_same(logits(run.model, GPT2_VOCAB), logits(ref, GPT2_VOCAB))
    assert all(v.dtype == torch.float32 for v in load_file(str(out / "model.safetensors")).values())
    assert source_meta(out)["dtype"] == str(dtype).replace("torch.", "")


def test_lightning_ckpt_ema_and_raw(tmp_path):
    raw, ema = tiny(seed=0), tiny(seed=1)
    sd = {f"backbone.{k}": v for k, v in raw.state_dict().items()}
    sd["noise.sigma_max"] = torch.tensor(20.0)
    shadow = [p.detach().clone() for p in ema.parameters()] + [torch.zeros(3)]  # + a non-backbone parameter
    d = tmp_path / "ckpts"
    d.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": sd, "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": shadow},
                "hyper_parameters": AttrDict(config=HParams(), tokenizer=TokenizerLike(marker)),
                "global_step": 1000}, d / "last.ckpt")
    ckpt = d / "last.ckpt"
    assert interop.detect_layout(ckpt) == "lightning-ckpt"
    with pytest.raises(Exception):  # noqa: B017 -- the plain weights-only loader refuses this checkpoint
        torch.load(ckpt, weights_only=True)

    state, info = interop.read_backbone_state(ckpt)
    assert info["ema"] and info["ema_extra_tensors"] == 1 and "noise.sigma_max" in info["ignored_keys"]
    stubbed = set(info["stubbed_classes"])  # the pickled classes were neither imported nor called
    assert {f"{__name__}.AttrDict", f"{__name__}.TokenizerLike", "collections.defaultdict"} <= stubbed
    assert any(n.endswith(".mkdir") for n in stubbed) and not marker.exists()
    assert "rotary_emb.inv_freq" in state  # buffers come from state_dict, only parameters from the EMA

    with pytest.raises(DidiError, match="n_heads"):
        interop.convert(str(ckpt), tmp_path / "x")
    out_ema = interop.convert(str(ckpt), tmp_path / "ema", n_heads=2)
    out_raw = interop.convert(str(ckpt), tmp_path / "raw", n_heads=2, use_ema=False)
    assert_same(logits(runs.load_run(out_ema).model, GPT2_VOCAB), logits(ema, GPT2_VOCAB))
    assert_same(logits(runs.load_run(out_raw).model, GPT2_VOCAB), logits(raw, GPT2_VOCAB))
    assert not torch.equal(logits(ema, GPT2_VOCAB), logits(raw, GPT2_VOCAB))
    assert source_meta(out_raw)["ema"] is False


def write_didi_pair(d: Path, vocab: int) -> tuple[DIT, Discriminator]:
    student = tiny(vocab, seed=2)
    disc = Discriminator.from_teacher(tiny(vocab, seed=3))
    with torch.no_grad():
        for p in disc.output_layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        disc.train()
        for _ in range(3):  # power iterations move weight_u / weight_v away from their initial values
            disc(*inputs(vocab, seed=5))
    disc.eval()
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(d / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in disc.state_dict().items()}, str(d / "discriminator.safetensors"))
    return student, disc


def test_didi_instruct_pair_small_vocab(tmp_path):
    tok = amino_tokenizer()
    vocab = tok.model_vocab_size
    student, disc = write_didi_pair(tmp_path / "didi-instruct", vocab)
    keys = set(load_file(str(tmp_path / "didi-instruct" / "discriminator.safetensors")))
    assert {"output_layer.main.0.weight_orig", "output_layer.main.0.weight_u", "output_layer.main.0.weight_v",
            "output_layer.main.0.bias", "output_layer.main.2.weight_orig"} <= keys
    assert interop.detect_layout(tmp_path / "didi-instruct") == "didi-instruct"

    with pytest.raises(DidiError, match="--tokenizer"):
        interop.convert(str(tmp_path / "didi-instruct"), tmp_path / "x", n_heads=2)
    tok.save(tmp_path / "tok")
    out = interop.convert(str(tmp_path / "didi-instruct"), tmp_path / "run", n_heads=2, tokenizer=str(tmp_path / "tok"))
    run = runs.load_run(out)
    assert_same(logits(run.model, vocab), logits(student, vocab))
    loaded = interop.load_discriminator(out)
    assert not loaded.training
    assert_same(logits(loaded, vocab), logits(disc, vocab))
    src = disc.state_dict()
    for k, v in loaded.state_dict().items():  # spectral-norm u, v restored exactly
        assert torch.equal(v, src[k]), k
    assert set(load_file(str(out / "discriminator.safetensors"))) == set(src)


def test_sdtt_like_compiled_ckpt(tmp_path):
    model = tiny(seed=4)
    sd = {f"backbone._orig_mod.{k}": v for k, v in model.state_dict().items()}
    sd.update({f"teacher.backbone.{k}": v for k, v in tiny(seed=9).state_dict().items()})
    (tmp_path / "sdtt").mkdir()
    torch.save({"state_dict": sd}, tmp_path / "sdtt" / "student.ckpt")
    out = interop.convert(str(tmp_path / "sdtt" / "student.ckpt"), tmp_path / "run", n_heads=2)
    assert_same(logits(runs.load_run(out).model, GPT2_VOCAB), logits(model, GPT2_VOCAB))
    assert any(k.startswith("teacher.") for k in source_meta(out)["ignored_keys"])
    # the SDTT safetensors form is the HF layout with `backbone.` keys
    src = write_hf(tmp_path / "sdtt-st", model)
    out2 = interop.convert(str(src), tmp_path / "run2", n_heads=2)
    assert_same(logits(runs.load_run(out2).model, GPT2_VOCAB), logits(model, GPT2_VOCAB))


def test_export_then_convert_is_identity(tmp_path):
    tok = amino_tokenizer()
    write_didi_pair(tmp_path / "pair", tok.model_vocab_size)
    tok.save(tmp_path / "tok")
    run1 = interop.convert(str(tmp_path / "pair"), tmp_path / "run1", n_heads=2, tokenizer=str(tmp_path / "tok"))
    exported = interop.export(run1, tmp_path / "exported")
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["model_type"] == "didi-dit"
    # the pair carried no config.json: shapes come from the tensors, n_heads from the caller, and the length is
    # the official 1024 (nothing in the weights says otherwise)
    assert {k: cfg[k] for k in ("hidden_dim", "cond_dim", "n_blocks", "n_heads", "model_length", "vocab_size",
                                "time_conditioning")} == {"hidden_dim": 32, "cond_dim": 16, "n_blocks": 2,
                                                          "n_heads": 2, "model_length": 1024, "vocab_size": 30,
                                                          "time_conditioning": False}
    # a student with a discriminator is written in the didi-instruct-small layout: bare DiT names
    student_keys = set(load_file(str(exported / "model.safetensors")))
    assert "vocab_embed.embedding" in student_keys and not any(k.startswith("backbone.") for k in student_keys)
    assert set(load_file(str(exported / "discriminator.safetensors"))) == set(
        load_file(str(tmp_path / "pair" / "discriminator.safetensors")))
    assert interop.detect_layout(exported) == "didi-instruct"
    run2 = interop.convert(str(exported), tmp_path / "run2")  # config.json and tokenizer/ travel with the export
    for name in ("model.safetensors", "discriminator.safetensors"):
        a, b = load_file(str(run1 / name)), load_file(str(run2 / name))
        assert set(a) == set(b), name
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (name, k)
    assert runs.load_run(run1).config.model == runs.load_run(run2).config.model


def test_export_gpt2_layout_matches_mdlm_owt(tmp_path):
    model = tiny()
    run = interop.convert(str(write_hf(tmp_path / "src", model, config=hf_config())), tmp_path / "run")
    exported = interop.export(str(run), tmp_path / "exp")
    original = load_file(str(tmp_path / "src" / "model.safetensors"))
    again = load_file(str(exported / "model.safetensors"))
    assert set(again) == set(original)
    assert all(torch.equal(original[k], again[k]) for k in original)
    with pytest.raises(DidiError, match="not empty"):
        interop.export(str(run), tmp_path / "exp")


def test_load_strict_names_bad_keys():
    model = tiny(vocab=30)
    state = dict(model.state_dict())
    del state["rotary_emb.inv_freq"]  # a recomputable buffer may be absent
    interop.load_strict(tiny(vocab=30, seed=5), state, "ok weights")
    del state["blocks.1.attn_qkv.weight"]
    state["blocks.7.extra"] = torch.zeros(1)
    state["sigma_map.mlp.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(DidiError) as e:
        interop.load_strict(tiny(vocab=30), state, "test weights")
    msg = str(e.value)
    assert "test weights" in msg and "blocks.1.attn_qkv.weight" in msg and "blocks.7.extra" in msg
    assert "sigma_map.mlp.0.weight (3, 3)" in msg and "missing" in msg and "unexpected" in msg


def test_convert_refuses_incomplete_checkpoint(tmp_path):
    model = tiny()
    d = write_hf(tmp_path / "src", model, config=hf_config())
    sd = load_file(str(d / "model.safetensors"))
    del sd["backbone.output_layer.linear.bias"]
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(DidiError, match="output_layer.linear.bias"):
        interop.convert(str(d), tmp_path / "run")
    (d / "config.json").write_text(json.dumps({**hf_config(), "hidden_dim": 64}))
    with pytest.raises(DidiError, match="hidden_dim"):
        interop.convert(str(d), tmp_path / "run")


def test_unknown_layout_and_missing_source(tmp_path):
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "notes.txt").write_text("hi")
    (tmp_path / "weird" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(DidiError, match="notes.txt"):
        interop.detect_layout(tmp_path / "weird")
    with pytest.raises(DidiError, match="unknown checkpoint layout"):
        interop.convert(str(tmp_path / "weird" / "pytorch_model.bin"), tmp_path / "out")
    with pytest.raises(DidiError, match="does not exist"):
        interop.resolve_source(str(tmp_path / "nope"))


def test_overwrite_refusal(tmp_path):
    src = write_hf(tmp_path / "src", tiny(), config=hf_config())
    out = interop.convert(str(src), tmp_path / "run")
    with pytest.raises(DidiError, match="overwrite"):
        interop.convert(str(src), out)
    interop.convert(str(src), out, overwrite=True)
    runs.load_run(out)


def test_hub_offline_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DidiError, match="hf:nobody/nothing") as e:
        interop.resolve_source("hf:nobody/nothing")
    assert "\n" not in str(e.value)
    with pytest.raises(DidiError, match="OWNER/NAME"):
        interop.resolve_source("hf:justaname")
    run = interop.convert(str(write_hf(tmp_path / "src", tiny(), config=hf_config())), tmp_path / "run")
    with pytest.raises(DidiError, match="HF_HUB_OFFLINE"):
        interop.push(str(run), "someone/model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(DidiError, match="token"):
        interop.push(str(run), "someone/model")


def test_didi_load_official_dir_and_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("DIDI_CACHE", str(tmp_path / "cache"))
    model = tiny()
    src = write_hf(tmp_path / "mdlm-owt", model, torch.bfloat16, hf_config())
    pipe = didi.load(str(src))
    assert_same(logits(pipe.model, GPT2_VOCAB), logits(rounded(model, torch.bfloat16), GPT2_VOCAB))
    out = pipe.sample(num=1, steps=4)
    assert out.tokens.shape == (1, LENGTH) and isinstance(out.text[0], str)
    converted = list((tmp_path / "cache" / "converted").iterdir())
    assert len(converted) == 1 and (converted[0] / "config.json").is_file()
    again = interop.load(str(src))  # reuses the cached conversion
    assert again.path == converted[0]
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1
    assert interop.load(str(converted[0])).path == converted[0]  # a didi run directory loads directly


def test_config_inferred_from_shapes_or_config_json():
    cfg = ModelConfig(vocab_size=30, hidden_dim=128, cond_dim=16, n_blocks=3, n_heads=2, length=LENGTH)
    state = DIT(cfg).state_dict()
    guessed = interop.infer_model_config(state)  # no config.json: 64-dim heads, the official length
    assert (guessed.vocab_size, guessed.hidden_dim, guessed.cond_dim, guessed.n_blocks) == (30, 128, 16, 3)
    assert (guessed.n_heads, guessed.length, guessed.time_conditioning) == (2, 1024, False)
    official = {"hidden_dim": 128, "cond_dim": 16, "n_blocks": 3, "n_heads": 4, "model_length": 64, "vocab_size": 30,
                "time_conditioning": True, "dropout": 0.1}
    read = interop.infer_model_config(state, official)
    assert (read.n_heads, read.length, read.time_conditioning, read.dropout) == (4, 64, True, 0.1)
    assert interop.infer_model_config(state, official, n_heads=8).n_heads == 8  # --n-heads wins
    with pytest.raises(DidiError, match="n_blocks=4"):
        interop.infer_model_config(state, {**official, "n_blocks": 4})


def test_hf_source_goes_through_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    src = write_hf(tmp_path / "snapshot", tiny(), config=hf_config())
    (tmp_path / "sdtt-snapshot").mkdir()  # a repository of Lightning checkpoints: nothing fetched at the top
    snapshots = {"kuleshov-group/mdlm-owt": src, "jdeschena/sdtt": tmp_path / "sdtt-snapshot"}
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kwargs):
        calls.append((repo_id, list(allow_patterns), local_files_only))
        return str(snapshots[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id: ["README.md", "students/kld_7.ckpt"])
    monkeypatch.setenv("DIDI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = didi.load("hf:kuleshov-group/mdlm-owt")
    assert calls == [("kuleshov-group/mdlm-owt", interop.HF_PATTERNS, True)]  # offline: the cache only
    assert_same(logits(pipe.model, GPT2_VOCAB), logits(tiny(), GPT2_VOCAB))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert interop.resolve_source("hf:kuleshov-group/mdlm-owt/model.safetensors") == src / "model.safetensors"
    assert calls[-1] == ("kuleshov-group/mdlm-owt",
                         ["model.safetensors", "model.safetensors/*", "model.safetensors/**", "config.json"], False)
    assert "*.ckpt" not in interop.HF_PATTERNS  # a whole repository of checkpoints is never fetched
    with pytest.raises(DidiError, match=r"hf:jdeschena/sdtt/PATH/TO/FILE.ckpt \(checkpoints there: students/kld_7"):
        interop.resolve_source("hf:jdeschena/sdtt")


def test_push_uploads_the_export(tmp_path, monkeypatch):
    import huggingface_hub
    from safetensors.torch import load as load_bytes

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = tiny()
    run = interop.convert(str(write_hf(tmp_path / "src", model, config=hf_config())), tmp_path / "run")
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            calls["create"] = (repo_id, private, exist_ok, repo_type)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
            calls["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.is_file()}

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = interop.push(str(run), "me/tiny-mdlm", token="secret", private=True)
    assert url == "https://huggingface.co/me/tiny-mdlm" and calls["token"] == "secret"
    assert calls["create"] == ("me/tiny-mdlm", True, True, "model")
    assert {"config.json", "model.safetensors", "README.md"} <= set(calls["files"])
    assert b"hf:me/tiny-mdlm" in calls["files"]["README.md"]
    uploaded = load_bytes(calls["files"]["model.safetensors"])
    assert all(torch.equal(uploaded[f"backbone.{k}"], v) for k, v in model.state_dict().items())


def run_cli(argv, capsys) -> tuple[int, str, list[str]]:
    from didi.cli import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def test_cli_unknown_layout_is_one_line_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "pytorch_model.bin").write_bytes(b"x")
    for argv in (["convert", tmp_path / "weird", tmp_path / "out"], ["sample", tmp_path / "weird", "--num", "1"]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("didi: error: unknown checkpoint layout") and "pytorch_model.bin" in err[0]
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(["convert", "hf:nobody/nothing", tmp_path / "out"], capsys)
    assert code == 2 and len(err) == 1 and "HF_HUB_OFFLINE" in err[0], err


def test_cli_convert_sample_export_roundtrip(tmp_path, capsys):
    from didi.api import Pipeline

    model = tiny()
    src = write_hf(tmp_path / "mdlm-owt", model, torch.bfloat16, hf_config())
    code, out, err = run_cli(["convert", src, tmp_path / "run"], capsys)
    assert code == 0 and "mdlm-hf" in out and "bfloat16" in out, (out, err)
    code, _, err = run_cli(["convert", src, tmp_path / "run"], capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]

    code, out, err = run_cli(["sample", tmp_path / "run", "--num", "2", "--steps", "4", "--seed", "3",
                              "--out", tmp_path / "s.jsonl", "--quiet"], capsys)
    assert code == 0, err
    got = [json.loads(line)["tokens"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    ref = rounded(model, torch.bfloat16)  # the source weights, as stored
    source = Pipeline(runs.Run(path=src, config=runs.load_run(tmp_path / "run").config,
                               tokenizer=runs.load_run(tmp_path / "run").tokenizer, model=ref))
    assert got == source.sample(num=2, steps=4, seed=3).tokens.tolist()

    code, out, err = run_cli(["export", tmp_path / "run", tmp_path / "exp"], capsys)
    assert code == 0, err
    again = load_file(str(tmp_path / "exp" / "model.safetensors"))
    assert all(torch.equal(again[f"backbone.{k}"], v) for k, v in ref.state_dict().items())
    code, _, err = run_cli(["export", tmp_path / "run", tmp_path / "exp"], capsys)
    assert code == 2 and len(err) == 1 and "not empty" in err[0]
