"""Interop with the official checkpoints: convert them into didi run directories, export didi runs back.

Layouts read (names of the DiT are the official ones, see `didi.nn.dit`):

* ``mdlm-hf``        -- a Hugging Face directory (e.g. ``kuleshov-group/mdlm-owt``): ``config.json``
  (hidden_dim, cond_dim, n_blocks, n_heads, model_length, vocab_size, time_conditioning) and
  ``model.safetensors`` whose keys are the DiT names prefixed ``backbone.`` (SDTT students too).
* ``lightning-ckpt`` -- an MDLM / DUO / SDTT Lightning ``.ckpt``: ``state_dict`` with ``backbone.`` keys and
  the EMA under ``ema.shadow_params`` (an unnamed list in ``backbone.parameters()`` order; used by default).
* ``didi-instruct``  -- ``haoyangzheng/didi-instruct-small``: ``model.safetensors`` (the student, DiT names)
  and ``discriminator.safetensors`` (a backbone copy with a spectral-norm head ``output_layer.main.{0,2}``).
* ``didi-run``       -- a didi run directory (config.json with a "model" section, tokenizer/, weights).

A converted run directory holds config.json, tokenizer/, model.safetensors (float32), source.json
(what was read), and for DiDi pairs discriminator.safetensors + discriminator.json.
`export` writes a run back in the mdlm-owt layout, or in the didi-instruct layout when it has a discriminator.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from . import fileio, runs
from .config import ModelConfig, RunConfig
from .errors import DidiError

DISC_WEIGHTS = "discriminator.safetensors"
DISC_META = "discriminator.json"
SOURCE_META = "source.json"
HF_CONFIG = "config.json"
DIT_ROOTS = ("vocab_embed", "sigma_map", "rotary_emb", "blocks", "output_layer")
GPT2_MODEL_VOCAB = 50258
CKPT_SUFFIXES = (".ckpt", ".pt", ".pth")
# what `hf:OWNER/NAME` fetches: the files of the official layouts only (never every checkpoint of a repository)
HF_PATTERNS = ["config.json", "model.safetensors", "discriminator.safetensors", "README.md", "tokenizer/*"]
_WRAPPER = re.compile(r"(^|\.)(_orig_mod|module)\.")  # torch.compile / DDP wrappers inside key names


# --------------------------------------------------------------------------------------------- sources


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def resolve_source(src: str | Path) -> Path:
    """``hf:OWNER/NAME[/PATH]`` -> a local snapshot (cached; honors HF_HUB_OFFLINE); a local path -> Path."""
    s = str(src)
    if s.startswith("hf:"):
        parts = s[3:].strip("/").split("/")
        if len(parts) < 2 or not all(parts[:2]):
            raise DidiError(f"bad source '{s}': expected hf:OWNER/NAME (optionally hf:OWNER/NAME/PATH/IN/REPO)")
        repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
        patterns = [sub, f"{sub}/*", f"{sub}/**"] if sub else HF_PATTERNS
        if sub:  # a file or folder inside the repo: also fetch the repo's top-level config
            patterns.append(HF_CONFIG)
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=_offline()))
        except Exception as e:  # noqa: BLE001 -- every hub failure becomes one clear line
            how = " (HF_HUB_OFFLINE is set and it is not cached)" if _offline() else ""
            raise DidiError(f"cannot download {s}{how}: {_one_line(e)}") from None
        path = local / sub if sub else local
        if not path.exists():
            raise DidiError(f"{s}: '{sub}' is not in the downloaded snapshot {local}")
        if not sub and not (local / runs.WEIGHTS).is_file():
            raise DidiError(f"{s} has no {runs.WEIGHTS} at its top level; name the checkpoint inside the repository, "
                            f"e.g. hf:{repo_id}/PATH/TO/FILE.ckpt{_repo_checkpoints(repo_id)}")
        return path
    path = Path(s).expanduser()
    if not path.exists():
        raise DidiError(f"source {s} does not exist (give a directory, a .ckpt, a .safetensors or hf:OWNER/NAME)")
    return path


def _repo_checkpoints(repo_id: str) -> str:
    """' (checkpoints there: ...)' when the hub can be asked, else ''."""
    if _offline():
        return ""
    try:
        from huggingface_hub import list_repo_files

        files = [f for f in list_repo_files(repo_id) if f.endswith(CKPT_SUFFIXES + (".safetensors",))]
    except Exception:  # noqa: BLE001 -- only a hint
        return ""
    return f" (checkpoints there: {', '.join(files[:10])}{' ...' if len(files) > 10 else ''})" if files else ""


def _listing(path: Path) -> str:
    if path.is_dir():
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        return ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "(empty directory)"
    return path.name


def detect_layout(path: str | Path) -> str:
    """One of "mdlm-hf", "lightning-ckpt", "didi-instruct", "didi-run"; anything else is refused."""
    path = Path(path)
    if path.is_file():
        if path.suffix in CKPT_SUFFIXES:
            return "lightning-ckpt"
        if path.suffix == ".safetensors":
            return "mdlm-hf"
        raise DidiError(f"unknown checkpoint layout: {path} is neither a .ckpt/.pt nor a .safetensors file")
    if not path.is_dir():
        raise DidiError(f"{path} does not exist")
    cfg = _read_json(path / HF_CONFIG)
    if isinstance(cfg.get("model"), dict) and (path / runs.TOKENIZER_DIR).is_dir():
        return "didi-run"
    if (path / runs.WEIGHTS).is_file() and (path / DISC_WEIGHTS).is_file():
        return "didi-instruct"
    if (path / runs.WEIGHTS).is_file():
        return "mdlm-hf"
    ckpts = sorted(p for p in path.iterdir() if p.suffix in CKPT_SUFFIXES)
    if len(ckpts) == 1:
        return "lightning-ckpt"
    if len(ckpts) > 1:
        raise DidiError(f"{path} holds several checkpoints ({', '.join(p.name for p in ckpts[:10])}); name one")
    raise DidiError(f"unknown checkpoint layout in {path}: found {_listing(path)}; expected model.safetensors "
                    "(+ config.json / discriminator.safetensors), a Lightning .ckpt, or a didi run directory")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DidiError(f"cannot read {path}: {_one_line(e)}") from None
    return d if isinstance(d, dict) else {}


# --------------------------------------------------------------------------------------------- reading


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise DidiError(f"cannot read {path}: {_one_line(e)}") from None


class _Inert:
    """What a class or function the checkpoint pickled (omegaconf configs, a tokenizer, ...) becomes: an inert
    record of what it was built from. Dict-like and list-like fillings are kept too, nothing is ever run."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __setitem__(self, key, value):
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values):
        for v in values:
            self.append(v)


_INERT: dict[str, type] = {}


def _inert(qualname: str) -> type:
    if qualname not in _INERT:
        module, _, name = qualname.rpartition(".")
        _INERT[qualname] = type(name or qualname, (_Inert,), {"__module__": module or "didi.interop.unknown"})
    return _INERT[qualname]


def _allowed_globals() -> dict:
    """The globals torch's own weights-only loader accepts (tensor rebuilding, dtypes, OrderedDict, ...)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover -- a torch without that private helper
        import collections

        return {"collections.OrderedDict": collections.OrderedDict,
                "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
                "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter}


def _restricted_pickle(stubbed: set[str]):
    """A pickle module for torch.load whose unpickler resolves only torch's weights-only globals; every other
    global becomes an inert stand-in (recorded in `stubbed`). Unlike weights_only=True it accepts dict / list
    subclasses and other objects that Lightning checkpoints pickle in `hyper_parameters` (the tokenizer, the
    omegaconf config), and like it, it never imports or calls anything the file names."""
    import pickle
    import types

    allowed = _allowed_globals()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            qualname = f"{module}.{name}"
            if qualname in allowed:
                return allowed[qualname]
            stubbed.add(qualname)
            return _inert(qualname)

    def load(f, **kwargs):
        return Unpickler(f, **kwargs).load()

    return types.SimpleNamespace(__name__="didi_restricted_pickle", Unpickler=Unpickler, load=load)


def _torch_load(path: Path) -> tuple[dict, list[str]]:
    """torch.load with weights_only=True; if the pickle names other classes (hyper-parameters), again with a
    restricted unpickler that turns them into inert stand-ins. Returns the object and the stubbed names."""
    def attempt(**kwargs):
        try:
            return torch.load(str(path), map_location="cpu", mmap=True, **kwargs)
        except RuntimeError as e:  # files in the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(e).lower():
                raise
            return torch.load(str(path), map_location="cpu", **kwargs)

    stubbed: set[str] = set()
    try:
        obj = attempt(weights_only=True)
    except Exception:  # noqa: BLE001 -- retry with the restricted unpickler
        try:
            obj = attempt(weights_only=False, pickle_module=_restricted_pickle(stubbed))
        except Exception as e:  # noqa: BLE001
            raise DidiError(f"cannot read checkpoint {path}: {_one_line(e)}") from None
    if not isinstance(obj, dict):
        raise DidiError(f"{path} does not hold a checkpoint dictionary (got {type(obj).__name__})")
    return obj, sorted(stubbed)


def _split_backbone(sd: dict, what: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The DiT tensors of `sd` in didi names (prefix `backbone.` stripped); the other keys are returned as ignored."""
    norm = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            norm[_WRAPPER.sub(r"\1", k)] = (k, v)
    prefixed = any(k.startswith("backbone.") for k in norm)
    state, ignored = {}, [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    for k, (orig, v) in norm.items():
        if prefixed:
            if k.startswith("backbone."):
                state[k[len("backbone."):]] = v
            else:
                ignored.append(orig)
        elif k.split(".", 1)[0] in DIT_ROOTS:
            state[k] = v
        else:
            ignored.append(orig)
    if "vocab_embed.embedding" not in state:
        sample = ", ".join(list(sd)[:10])
        raise DidiError(f"no DiT backbone weights in {what} (no vocab_embed.embedding); its keys start: {sample}")
    return state, ignored


def _dtype_name(state: dict[str, torch.Tensor]) -> str:
    names = sorted({str(v.dtype).replace("torch.", "") for v in state.values() if v.is_floating_point()})
    return names[0] if len(names) == 1 else ",".join(names)


def _to_fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _ckpt_file(path: Path) -> Path:
    if path.is_file():
        return path
    return next(p for p in sorted(path.iterdir()) if p.suffix in CKPT_SUFFIXES)


def _weights_file(path: Path) -> Path:
    return path if path.is_file() else path / runs.WEIGHTS


def read_backbone_state(path: str | Path, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """The backbone (student) weights in didi DiT names, float32; info: layout, files, source dtype, ignored keys."""
    path = Path(path)
    layout = detect_layout(path)
    info: dict = {"layout": layout, "ema": False}
    if layout == "lightning-ckpt":
        f = _ckpt_file(path)
        ckpt, stubbed = _torch_load(f)
        info.update(file=str(f), stubbed_classes=stubbed)
        sd = ckpt.get("state_dict")
        if not isinstance(sd, dict):  # a bare state dict saved with torch.save
            sd = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
        state, ignored = _split_backbone(sd, str(f))
        info["dtype"] = _dtype_name(state)
        shadow = (ckpt.get("ema") or {}).get("shadow_params") if isinstance(ckpt.get("ema"), dict) else None
        info["has_ema"] = bool(shadow)
        if use_ema and shadow:
            # the EMA list follows backbone.parameters(): the state-dict order without buffers (rotary inv_freq)
            names = [k for k in state if not k.endswith("inv_freq")]
            if len(shadow) < len(names):
                raise DidiError(f"the EMA in {f} has {len(shadow)} tensors but the backbone has {len(names)} "
                                "parameters; pass use_ema=False (--no-ema) to use the raw weights")
            for i, (name, t) in enumerate(zip(names, shadow, strict=False)):
                if tuple(t.shape) != tuple(state[name].shape):
                    raise DidiError(f"EMA tensor {i} has shape {tuple(t.shape)} but parameter {name} has "
                                    f"{tuple(state[name].shape)} in {f}; pass use_ema=False to use the raw weights")
                state[name] = t
            info.update(ema=True, ema_extra_tensors=len(shadow) - len(names))
        info["ignored_keys"] = ignored
    elif layout in ("mdlm-hf", "didi-instruct", "didi-run"):
        f = _weights_file(path)
        if not f.is_file():
            raise DidiError(f"{path} has no {runs.WEIGHTS}")
        state, ignored = _split_backbone(_load_safetensors(f), str(f))
        info.update(file=str(f), dtype=_dtype_name(state), ignored_keys=ignored)
    else:  # pragma: no cover -- detect_layout only returns the layouts above
        raise DidiError(f"unsupported layout {layout}")
    return _to_fp32(state), info


def read_discriminator_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The DiDi discriminator weights (official names = didi names), float32, and info."""
    path = Path(path)
    f = path / DISC_WEIGHTS if path.is_dir() else path
    if not f.is_file():
        raise DidiError(f"no {DISC_WEIGHTS} in {path}")
    state, ignored = _split_backbone(_load_safetensors(f), str(f))
    for k in list(state):  # a derived spectral-norm weight next to weight_orig carries no information
        if k.endswith(".weight") and k[: -len("weight")] + "weight_orig" in state:
            ignored.append(k)
            del state[k]
    return _to_fp32(state), {"file": str(f), "dtype": _dtype_name(state), "ignored_keys": ignored}


# --------------------------------------------------------------------------------------------- config


def infer_model_config(state: dict[str, torch.Tensor], cfg: dict | None = None, n_heads: int | None = None,
                       what: str = "the checkpoint") -> ModelConfig:
    """Shapes from the weights; n_heads / length / time_conditioning / dropout from the official config."""
    cfg = cfg or {}
    emb = state["vocab_embed.embedding"]
    vocab, hidden = int(emb.shape[0]), int(emb.shape[1])
    if "sigma_map.mlp.0.weight" not in state:
        raise DidiError(f"no sigma_map.mlp.0.weight in {what}: cannot infer cond_dim")
    cond = int(state["sigma_map.mlp.0.weight"].shape[0])
    idx = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    n_blocks = max(idx) + 1 if idx else 0
    for key, val in (("hidden_dim", hidden), ("cond_dim", cond), ("n_blocks", n_blocks), ("vocab_size", vocab)):
        if key in cfg and int(cfg[key]) != val:
            raise DidiError(f"config.json says {key}={cfg[key]} but the weights in {what} have {val}")
    heads = n_heads or cfg.get("n_heads")
    if not heads:
        if hidden % 64:
            raise DidiError(f"cannot infer n_heads for hidden size {hidden} (no config.json); pass n_heads "
                            "(--n-heads N)")
        heads = hidden // 64
    heads = int(heads)
    if hidden % heads:
        raise DidiError(f"hidden size {hidden} is not divisible by n_heads {heads}")
    return ModelConfig(arch="dit", vocab_size=vocab, hidden_dim=hidden, cond_dim=cond, n_blocks=n_blocks,
                       n_heads=heads, length=int(cfg.get("model_length", cfg.get("length", 1024))),
                       dropout=float(cfg.get("dropout", 0.0)),
                       time_conditioning=bool(cfg.get("time_conditioning", False)))


def _official_config(path: Path) -> dict:
    d = path if path.is_dir() else path.parent
    cfg = _read_json(d / HF_CONFIG)
    return {} if isinstance(cfg.get("model"), dict) else cfg  # a didi RunConfig is not an official config


def _resolve_tokenizer(spec: str | None, model_vocab: int, src: Path):
    from .tokenizers import Tokenizer, get_tokenizer, gpt2_tokenizer

    if spec:
        if spec.startswith("bpe:"):
            raise DidiError("a converted model needs its own tokenizer: pass gpt2, amino or a tokenizer directory")
        tok, name = get_tokenizer(spec), spec if spec in ("gpt2", "amino") else str(Path(spec).resolve())
    elif (d := (src if src.is_dir() else src.parent) / runs.TOKENIZER_DIR).is_dir() and \
            (d / "didi_tokenizer.json").is_file():
        tok, name = Tokenizer.load(d), "source"
    elif model_vocab == GPT2_MODEL_VOCAB:
        tok, name = gpt2_tokenizer(), "gpt2"
    else:
        raise DidiError(f"the model vocabulary is {model_vocab} (not GPT-2's {GPT2_MODEL_VOCAB}) and no tokenizer "
                        "ships with it: pass --tokenizer DIR (a saved didi tokenizer)")
    if tok.model_vocab_size != model_vocab:
        raise DidiError(f"tokenizer {name} gives a model vocabulary of {tok.model_vocab_size} (+1 mask) but the "
                        f"weights have {model_vocab}")
    return tok, name


# --------------------------------------------------------------------------------------------- loading


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `model` only if it matches exactly (recomputable inv_freq buffers may be absent)."""
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("inv_freq")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})" for k in state
             if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
                parts.append(f"{label} {len(items)}: {', '.join(items[:10])}{more}")
        raise DidiError(f"{what} do not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def build_discriminator(cfg: ModelConfig, time_conditioning: bool = True):
    import copy

    from .nn.discriminator import Discriminator
    from .nn.dit import DIT

    c = copy.deepcopy(cfg)
    c.time_conditioning = time_conditioning
    return Discriminator(DIT(c))


def load_discriminator(run, device: str | torch.device = "cpu"):
    """The discriminator saved beside a run's model (discriminator.safetensors + discriminator.json), in eval mode."""
    run_dir = Path(getattr(run, "path", run))
    cfg = RunConfig.load(runs.check_run_dir(run_dir) / runs.CONFIG)
    if not (run_dir / DISC_WEIGHTS).is_file():
        raise DidiError(f"{run_dir} has no {DISC_WEIGHTS}")
    meta = _read_json(run_dir / DISC_META)
    mcfg = ModelConfig(**{**cfg.model.__dict__, **meta.get("model", {})})
    disc = build_discriminator(mcfg, bool(meta.get("time_conditioning", True)))
    load_strict(disc, fileio.load_weights(run_dir / DISC_WEIGHTS), f"discriminator weights in {run_dir}")
    return disc.to(device).eval()


# --------------------------------------------------------------------------------------------- convert


def _prepare_out(out: Path, overwrite: bool, src: Path | None = None) -> None:
    if src is not None and out.resolve() == src.resolve():
        raise DidiError(f"the output {out} is the source itself; choose another directory")
    if out.exists() and not out.is_dir():
        raise DidiError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DidiError(f"{out} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        for name in (runs.CONFIG, runs.WEIGHTS, runs.CHECKPOINT, runs.METRICS, DISC_WEIGHTS, DISC_META, SOURCE_META,
                     "README.md"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / runs.TOKENIZER_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def convert(src: str | Path, out: str | Path, *, n_heads: int | None = None, use_ema: bool = True,
            overwrite: bool = False, tokenizer: str | None = None,
            disc_time_conditioning: bool | None = None) -> Path:
    """Convert an official checkpoint (hf:REPO or a local path) into a didi run directory `out`."""
    from .nn.dit import DIT

    path = resolve_source(src)
    layout = detect_layout(path)
    if layout == "didi-run":
        raise DidiError(f"{path} is already a didi run directory; load it directly")
    out = Path(out)
    state, info = read_backbone_state(path, use_ema=use_ema)
    hf_cfg = _official_config(path)
    mcfg = infer_model_config(state, hf_cfg, n_heads, what=info.get("file", str(path)))
    tok, tok_name = _resolve_tokenizer(tokenizer, mcfg.vocab_size, path)
    model = DIT(mcfg)
    load_strict(model, state, f"weights in {info.get('file', path)}")

    disc = None
    if layout == "didi-instruct":
        dstate, dinfo = read_discriminator_state(path)
        dcfg = infer_model_config(dstate, hf_cfg, n_heads or mcfg.n_heads, what=dinfo["file"])
        tc = disc_time_conditioning
        if tc is None:
            tc = bool(hf_cfg.get("discriminator_time_conditioning", True))
        disc = build_discriminator(dcfg, tc)
        load_strict(disc, dstate, f"discriminator weights in {dinfo['file']}")
        info["discriminator"] = dinfo

    _prepare_out(out, overwrite, path)
    cfg = RunConfig(model=mcfg, preset="converted")
    cfg.data.tokenizer = tok_name if tok_name in ("gpt2", "amino") else str(out.resolve() / runs.TOKENIZER_DIR)
    tok.save(out / runs.TOKENIZER_DIR)
    fileio.save_weights(model.state_dict(), out / runs.WEIGHTS, metadata={"format": "pt", "didi_source": str(src)})
    if disc is not None:
        fileio.save_weights(disc.state_dict(), out / DISC_WEIGHTS, metadata={"format": "pt"})
        meta = {"time_conditioning": disc.config.time_conditioning,
                "model": {k: getattr(disc.config, k) for k in ("hidden_dim", "cond_dim", "n_blocks", "n_heads")}}
        fileio.atomic_write_text(out / DISC_META, json.dumps(meta, indent=2) + "\n")
    info.update(source=str(src), resolved=str(path), use_ema=use_ema, tokenizer=tok_name)
    fileio.atomic_write_text(out / SOURCE_META, json.dumps(info, indent=2, default=str) + "\n")
    cfg.save(out / runs.CONFIG)  # last: its presence marks a complete run directory
    return out


# --------------------------------------------------------------------------------------------- export / push


def _as_run(run) -> runs.Run:
    if isinstance(run, runs.Run):
        return run
    if hasattr(run, "run") and isinstance(run.run, runs.Run):  # an api.Pipeline
        return run.run
    return runs.load_run(run)


def export(run, out_dir: str | Path, overwrite: bool = False, repo_id: str | None = None) -> Path:
    """Write a run in the layout of the official Hugging Face repositories.

    A model alone: the kuleshov-group/mdlm-owt layout (config.json + model.safetensors with `backbone.` keys).
    A run with a discriminator (a DiDi-Instruct student): the haoyangzheng/didi-instruct-small layout
    (model.safetensors with the bare DiT names + discriminator.safetensors with the spectral-norm head), plus
    config.json. Both also carry tokenizer/ and a README.md model card; weights are float32.
    """
    run = _as_run(run)
    m = run.config.model
    if m.arch != "dit":
        raise DidiError(f"only DiT runs can be exported in the official layout (this run is '{m.arch}')")
    if m.noise_dim:
        raise DidiError("this student has a noise input (model.noise_dim > 0), which the official layouts have no "
                        "place for; sample it with didi, or distil without distill.student_noise_dim")
    disc = load_discriminator(run.path) if (Path(run.path) / DISC_WEIGHTS).is_file() else None
    out = Path(out_dir)
    _prepare_out(out, overwrite, Path(run.path))
    cfg = {"model_type": "didi-dit", "hidden_dim": m.hidden_dim, "cond_dim": m.cond_dim, "n_blocks": m.n_blocks,
           "n_heads": m.n_heads, "model_length": m.length, "vocab_size": m.vocab_size,
           "time_conditioning": m.time_conditioning, "dropout": m.dropout}
    prefix = "" if disc is not None else "backbone."
    state = {f"{prefix}{k}": v.float() for k, v in run.model.state_dict().items()}
    fileio.save_weights(state, out / runs.WEIGHTS, metadata={"format": "pt"})
    if disc is not None:
        fileio.save_weights({k: v.float() for k, v in disc.state_dict().items()}, out / DISC_WEIGHTS,
                          metadata={"format": "pt"})
        cfg["discriminator_time_conditioning"] = disc.config.time_conditioning
    run.tokenizer.save(out / runs.TOKENIZER_DIR)
    fileio.atomic_write_text(out / HF_CONFIG, json.dumps(cfg, indent=2) + "\n")
    names = ("a DiDi-Instruct student (bare DiT names, as haoyangzheng/didi-instruct-small) with its "
             "discriminator (discriminator.safetensors)" if disc is not None else
             "the MDLM names with the `backbone.` prefix, as kuleshov-group/mdlm-owt")
    card = (f"---\nlibrary_name: didi\ntags: [masked-diffusion, mdlm]\n---\n\n# didi DiT\n\nMasked diffusion LM "
            f"({m.n_blocks} blocks, hidden {m.hidden_dim}, {m.n_heads} heads, length {m.length}, vocabulary "
            f"{m.vocab_size}). Weights: {names}.\n\n"
            f"```python\nimport didi\npipe = didi.load(\"hf:{repo_id or 'OWNER/NAME'}\")\n"
            "print(pipe.sample(num=1, steps=64).text[0])\n```\n")
    fileio.atomic_write_text(out / "README.md", card)
    return out


def push(run, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Export `run` and upload it to the Hugging Face hub as `repo_id`; returns the repository URL."""
    import huggingface_hub

    if _offline():
        raise DidiError("cannot push: HF_HUB_OFFLINE is set")
    token = token or huggingface_hub.get_token()
    if not token:
        raise DidiError("cannot push: no Hugging Face token (pass token=, set HF_TOKEN or run `hf auth login`)")
    with tempfile.TemporaryDirectory(prefix="didi-push-") as tmp:
        folder = export(run, Path(tmp) / "export", repo_id=repo_id)
        try:
            api = huggingface_hub.HfApi(token=token)
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                              commit_message="Upload didi model")
        except Exception as e:  # noqa: BLE001
            raise DidiError(f"push to {repo_id} failed: {_one_line(e)}") from None
    return str(url)


# --------------------------------------------------------------------------------------------- load


def _cache_root() -> Path:
    return Path(os.environ.get("DIDI_CACHE", Path.home() / ".cache" / "didi")) / "converted"


def _fingerprint(path: Path, use_ema: bool) -> str:
    parts = [str(path.resolve()), f"ema={use_ema}"]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files[:200]:
        st = f.stat()
        parts.append(f"{f.relative_to(path) if path.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def load(source: str | Path, device: str | torch.device = "cpu", *, n_heads: int | None = None,
         use_ema: bool = True, tokenizer: str | None = None) -> runs.Run:
    """A didi run dir -> load_run; an official checkpoint -> converted once into the cache, then load_run."""
    path = resolve_source(source)
    if detect_layout(path) == "didi-run":
        return runs.load_run(path, device)
    dest = _cache_root() / _fingerprint(path, use_ema)
    if not ((dest / runs.CONFIG).is_file() and (dest / runs.WEIGHTS).is_file()):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        try:
            convert(str(path), tmp, n_heads=n_heads, use_ema=use_ema, overwrite=True, tokenizer=tokenizer)
            try:
                os.replace(tmp, dest)
            except OSError:  # another process finished first
                if not (dest / runs.CONFIG).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _fix_tokenizer_path(dest)
    return runs.load_run(dest, device)


def _fix_tokenizer_path(run_dir: Path) -> None:
    """After the move from the temporary directory, point data.tokenizer at the final tokenizer folder."""
    cfg = RunConfig.load(run_dir / runs.CONFIG)
    if cfg.data.tokenizer not in ("gpt2", "amino"):
        cfg.data.tokenizer = str(run_dir.resolve() / runs.TOKENIZER_DIR)
        cfg.save(run_dir / runs.CONFIG)
