"""Typed configuration: dataclasses, named presets, JSON save/load and `key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DidiError
from .fileio import atomic_write_text, read_json


@dataclass
class ModelConfig:
    arch: str = "dit"  # "dit" (bidirectional diffusion backbone) or "ar" (causal baseline)
    vocab_size: int = 8193  # model vocabulary: tokenizer vocabulary + 1 for the mask token
    hidden_dim: int = 256
    cond_dim: int = 128
    n_blocks: int = 4
    n_heads: int = 4
    length: int = 128  # model_length in the official configs
    dropout: float = 0.0
    time_conditioning: bool = False  # the official OWT teacher is not time-conditioned
    noise_dim: int = 0  # > 0: a per-sequence Gaussian input added to the conditioning (a distilled student's own
    # randomness, `distill.student_noise_dim`); 0 for teachers and every official checkpoint


@dataclass
class DiffusionConfig:
    eps: float = 1e-3  # log-linear schedule: alpha_t = 1 - (1 - eps) t
    antithetic: bool = True
    grid_power: float = 1.0  # the sampler's default time grid: t_i = 1 - (1 - t_min) (i / steps)^p (1: uniform)


@dataclass
class DataConfig:
    source: str = ""  # .txt / .jsonl / directory / hf:NAME[:CONFIG]
    valid_source: str = ""  # optional separate held-out source
    tokenizer: str = "bpe:8192"  # "gpt2", "bpe:N" (trained on the source), "amino", or a path
    valid_fraction: float = 0.02  # held-out share of documents when no valid_source is given
    cache_dir: str = ""  # default: ~/.cache/didi/tokens
    domain: str = "text"  # "text" or "protein" (one padded sequence per row, BOS/EOS/PAD never masked)
    layout: str = "packed"  # text: "packed" (documents joined with EOS, cut into blocks) or "rows" (one
    # document per row: its ids, then EOS repeated to the row's end; the model writes where it ends)
    ambiguous: str = "keep"  # protein FASTA: ambiguous residues X B Z U O: keep, map, skip or error
    long_sequences: str = "auto"  # rows: longer documents: "auto" (crop up to 1 % of them, else stop), "crop", "skip"
    # ("crop": a document's first ids, no EOS; "auto" stops naming the row length that fits them)


@dataclass
class TrainConfig:
    batch_size: int = 32  # global batch, split across DDP ranks
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 2000
    max_minutes: float = 0.0  # stop after this much wall-clock (0 = no limit); the schedule still uses max_steps
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema: float = 0.9999  # 0 disables the EMA copy
    eval_every: int = 250
    eval_batches: int = 20
    save_every: int = 500
    snapshot_every: int = 0  # also keep the sampling weights of every N-th step in snapshots/ (learning curves)
    log_every: int = 10
    seed: int = 0
    compile: bool = False
    bf16: bool = True  # autocast to bfloat16 on CUDA (on a CPU only with cpu_bf16)
    cpu_bf16: bool = False  # autocast to bfloat16 on a CPU too: on CPUs with AVX512-BF16 the tiny DiT's forward ran
    # 3.0x, forward + backward 1.8x and a DiDi iteration 2.1x faster (bench/results/cpu_bf16.md); weights,
    # optimizer states and the samplers' float64 draws are unchanged
    device: str = "auto"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "tiny"

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> RunConfig:
        """Check every value's range and the combinations before any work starts: one error naming the field and
        what it allows."""
        m, dif, d, t = self.model, self.diffusion, self.data, self.train
        checks = [
            ("model.arch", m.arch in ("dit", "ar"), "dit or ar"),
            ("model.hidden_dim", m.hidden_dim >= 1, ">= 1"), ("model.cond_dim", m.cond_dim >= 1, ">= 1"),
            ("model.n_blocks", m.n_blocks >= 1, ">= 1"), ("model.n_heads", m.n_heads >= 1, ">= 1"),
            ("model.hidden_dim", m.n_heads < 1 or m.hidden_dim % m.n_heads == 0,
             f"a multiple of model.n_heads ({m.n_heads})"),
            ("model.length", m.length >= 2, ">= 2"), ("model.dropout", 0.0 <= m.dropout < 1.0, "in [0, 1)"),
            ("model.noise_dim", m.noise_dim >= 0, ">= 0"),
            ("diffusion.eps", 0.0 < dif.eps < 1.0, "in (0, 1)"), ("diffusion.grid_power", dif.grid_power > 0, "> 0"),
            ("data.valid_fraction", 0.0 <= d.valid_fraction < 1.0, "in [0, 1)"),
            ("data.domain", d.domain in ("text", "protein"), "text or protein"),
            ("data.layout", d.layout in ("packed", "rows"), "packed or rows"),
            ("data.long_sequences", d.long_sequences in ("auto", "crop", "skip"), "auto, crop or skip"),
            ("data.ambiguous", d.ambiguous in ("keep", "map", "skip", "error"), "keep, map, skip or error"),
            ("train.batch_size", t.batch_size >= 1, ">= 1"), ("train.lr", t.lr > 0, "> 0"),
            ("train.min_lr_ratio", 0.0 <= t.min_lr_ratio <= 1.0, "in [0, 1]"),
            ("train.warmup_steps", t.warmup_steps >= 0, ">= 0"), ("train.max_steps", t.max_steps >= 1, ">= 1"),
            ("train.max_minutes", t.max_minutes >= 0, ">= 0 (0 = no limit)"),
            ("train.weight_decay", t.weight_decay >= 0, ">= 0"),
            ("train.betas", len(t.betas) == 2 and all(0.0 <= b < 1.0 for b in t.betas), "two values in [0, 1)"),
            ("train.grad_clip", t.grad_clip >= 0, ">= 0 (0 = no clipping)"), ("train.ema", 0.0 <= t.ema < 1.0,
                                                                              "in [0, 1) (0 = no EMA)"),
            ("train.eval_every", t.eval_every >= 0, ">= 0"), ("train.eval_batches", t.eval_batches >= 1, ">= 1"),
            ("train.save_every", t.save_every >= 0, ">= 0"), ("train.snapshot_every", t.snapshot_every >= 0, ">= 0"),
            ("train.log_every", t.log_every >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                section, key = name.split(".")
                raise DidiError(f"{name} = {getattr(getattr(self, section), key)!r} is not allowed: it must be "
                                f"{allowed}")
        import math

        for name, v in (("train.lr", t.lr), ("train.max_minutes", t.max_minutes), ("diffusion.eps", dif.eps)):
            if not math.isfinite(v):
                raise DidiError(f"{name} must be a finite number, not {v}")
        return self

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return typed_from_dict(cls, d, extra=("distill",))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        d = read_json(path)
        if not isinstance(d, dict):
            raise DidiError(f"{path} is damaged: not a didi config (a JSON object); restore it, or delete the run")
        try:
            return cls.from_dict(d)
        except RemovedOption as e:
            raise DidiError(f"{path}: {e}") from None
        except DidiError as e:
            raise DidiError(f"{path} is damaged or from another program: {e}; restore it, or delete the run") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise DidiError(f"{path} is damaged or from another program ({type(e).__name__}: {e}); restore it, or "
                            "delete the run") from None


# Presets: model shapes (the official ones) and training settings sized for their hardware.
PRESETS: dict[str, dict] = {
    # CPU-sized: 4 blocks / 256 hidden / 4 heads at length 128 (the official CPU reference shape).
    "tiny": {
        "model": dict(hidden_dim=256, cond_dim=128, n_blocks=4, n_heads=4, length=128, dropout=0.0),
        "train": dict(batch_size=32, lr=1e-3, warmup_steps=100, max_steps=2000, ema=0.99),
    },
    # The reference-language recipe: the tiny shape on one text per row (EOS-anchored), short rows and a
    # small BPE, 30 minutes on 2 cores. Texts of the built-in `stories` grammar fit in 48 tokens; set model.length
    # for a grammar with longer texts (`didi language info` gives the word count).
    "lang-tiny": {
        "model": dict(hidden_dim=256, cond_dim=128, n_blocks=4, n_heads=4, length=48, dropout=0.0),
        "data": dict(tokenizer="bpe:1024", layout="rows"),
        "train": dict(batch_size=64, lr=1e-3, warmup_steps=100, max_steps=5000, max_minutes=30.0, ema=0.99,
                      eval_every=500, snapshot_every=500),
    },
    # The official OpenWebText shape: ~169 M parameters with the GPT-2 vocabulary.
    "small": {
        "model": dict(hidden_dim=768, cond_dim=128, n_blocks=12, n_heads=12, length=1024, dropout=0.1),
        "data": dict(tokenizer="gpt2"),
        "train": dict(batch_size=512, lr=3e-4, warmup_steps=2500, max_steps=1_000_000, ema=0.9999),
    },
    "medium": {
        "model": dict(hidden_dim=1024, cond_dim=128, n_blocks=24, n_heads=16, length=1024, dropout=0.1),
        "data": dict(tokenizer="gpt2"),
        "train": dict(batch_size=512, lr=3e-4, warmup_steps=2500, max_steps=1_000_000, ema=0.9999),
    },
    # Proteins: one sequence per row (BOS residues EOS PAD ...), the amino-acid tokenizer.
    "protein-tiny": {
        "model": dict(hidden_dim=256, cond_dim=128, n_blocks=4, n_heads=4, length=256, dropout=0.0),
        "data": dict(tokenizer="amino", domain="protein", long_sequences="crop"),  # long proteins: first residues
        "train": dict(batch_size=32, lr=1e-3, warmup_steps=100, max_steps=2000, ema=0.99),
    },
    "protein-small": {
        "model": dict(hidden_dim=768, cond_dim=128, n_blocks=12, n_heads=12, length=1024, dropout=0.1),
        "data": dict(tokenizer="amino", domain="protein", long_sequences="crop"),  # long proteins: first residues
        "train": dict(batch_size=256, lr=3e-4, warmup_steps=2500, max_steps=500_000, ema=0.9999),
    },
    # Test-sized: seconds on a laptop core.
    "test": {
        "model": dict(hidden_dim=32, cond_dim=16, n_blocks=2, n_heads=2, length=32, dropout=0.0),
        "data": dict(tokenizer="bpe:300"),
        "train": dict(batch_size=8, lr=3e-3, warmup_steps=5, max_steps=50, ema=0.99, eval_every=25, eval_batches=2,
                      save_every=25, log_every=5),
    },
}


def preset(name: str, overrides: list[str] | None = None) -> RunConfig:
    if name not in PRESETS:
        raise DidiError(f"unknown preset '{name}' (choose from: {', '.join(PRESETS)})")
    cfg = RunConfig(preset=name)
    for section, values in PRESETS[name].items():
        sub = getattr(cfg, section)
        for k, v in values.items():
            setattr(sub, k, v)
    if overrides:
        apply_overrides(cfg, overrides)
    return cfg


def apply_overrides(cfg, overrides: list[str]):
    """Apply `section.key=value` strings (e.g. `train.lr=3e-4`, `model.n_blocks=6`) in place."""
    for item in overrides:
        if "=" not in item:
            raise DidiError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        obj, parts = cfg, dotted.strip().split(".")
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
                raise DidiError(f"unknown config section '{p}' in override '{item}'")
            obj = getattr(obj, p)
        key = parts[-1]
        fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
        if key not in fields:
            raise DidiError(f"unknown config key '{dotted}' (known: {', '.join(fields)})")
        hint = typing.get_type_hints(type(obj))[key]
        setattr(obj, key, _coerce(raw.strip(), hint, dotted))
    return cfg


def check_fields(obj, where: str, ranges=(), choices=()) -> None:
    """One error naming the first bad field of config `obj`: ranges are (name, ok, what it must be), choices are
    (name, allowed values); `where` prefixes the names (`distill.dmmd.`)."""
    for name, ok, allowed in ranges:
        if not ok:
            raise DidiError(f"{where}{name} = {getattr(obj, name)!r} is not allowed: it must be {allowed}")
    for name, allowed in choices:
        if getattr(obj, name) not in allowed:
            raise DidiError(f"{where}{name} must be {' or '.join(map(repr, allowed))}, not {getattr(obj, name)!r}")


def _coerce(raw: str, hint, name: str):
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(float(raw)) if "e" in raw.lower() else int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
        if typing.get_origin(hint) is tuple:
            args = typing.get_args(hint)
            vals = [v for v in raw.strip("()[] ").split(",") if v.strip()]
            return tuple(_coerce(v.strip(), a, name) for v, a in zip(vals, args, strict=True))
    except ValueError:
        raise DidiError(f"bad value '{raw}' for {name} (expected {getattr(hint, '__name__', hint)})") from None
    raise DidiError(f"cannot override {name} of type {hint}")


def _typed(value, hint, where: str):
    """`value` read from a saved config, checked against the field's type (an int where a float belongs is taken);
    anything else is one error naming the field."""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN is refused
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        ok = isinstance(value, (list, tuple)) and len(value) == len(args)
        if ok:
            return tuple(_typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    else:
        ok = True
    if not ok:
        kind = getattr(hint, "__name__", str(hint))
        raise DidiError(f"{where} is {json.dumps(value) if _jsonable(value) else repr(value)}, where a value of type "
                        f"{kind} belongs")
    return value


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


# Options removed after they were measured never to help (their numbers stay in docs/reference-log.md), with the
# value that meant "off": a saved config that holds that value still loads; one that used the option is refused.
REMOVED = {"ModelConfig": {"noise_positions": False},
           "DistillConfig": {"student_noise_positions": False, "noise_lr_mult": 1.0, "reward_credit": "sequence",
                             "norm_scope": "group"}}


class RemovedOption(DidiError):
    """A saved config uses an option that no longer exists."""


RENAMED = {"DiDiInstructConfig": {"rollout_grid": {"uniform": "sampler"}}}  # values saved under an older name


def _without_removed(cls, d: dict, where: str) -> dict:
    for key, names in RENAMED.get(cls.__name__, {}).items():
        if isinstance(d.get(key), str) and d[key] in names:
            d = {**d, key: names[d[key]]}
    removed = REMOVED.get(cls.__name__, {})
    for key in set(d) & set(removed):
        if d[key] != removed[key]:
            raise RemovedOption(f"{where}{key} = {d[key]!r}: this option was removed (measured never to help; "
                            f"docs/reference-log.md); a run that used it needs the didi it was made with")
    return {k: v for k, v in d.items() if k not in removed}


def typed_from_dict(cls, d: dict, where: str = "", extra: tuple[str, ...] = ()):
    """A config dataclass from its saved dict: every value type-checked, unknown keys refused (naming them); keys
    left out take their defaults, so configs saved before a field existed still load. extra: keys allowed beside
    the fields and ignored (a run config's `distill` section)."""
    if not isinstance(d, dict):
        raise DidiError(f"{where or 'the config'} is {type(d).__name__}, not a JSON object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    d = _without_removed(cls, d, where)
    unknown = sorted(set(d) - names - set(extra))
    if unknown:
        raise DidiError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(where + k for k in unknown)} "
                        f"(known here: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names & set(d):
        v, hint = d[name], hints[name]
        kwargs[name] = (typed_from_dict(hint, v, f"{where}{name}.") if dataclasses.is_dataclass(hint)
                        else _typed(v, hint, where + name))
    return cls(**kwargs)
