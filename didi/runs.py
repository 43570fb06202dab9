"""The run directory: config, tokenizer, safetensors weights, training state, all written atomically.

Layout of a run directory:
    config.json            RunConfig (what was trained, how)
    tokenizer/             the tokenizer used (so sampling decodes correctly)
    model.safetensors      weights used for sampling (the EMA copy when there is one)
    checkpoint.pt          full training state for --resume (model, EMA, optimizers, RNG, data position)
    checkpoint.prev.pt     the checkpoint before it (resume falls back to it when the latest is damaged)
    metrics.jsonl          one JSON object per logged step
    snapshots/             with train.snapshot_every: the sampling weights every N steps, for learning curves
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RunConfig
from .errors import DidiError
from .fileio import load_weights, previous_checkpoint

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TOKENIZER_DIR = "tokenizer"
SNAPSHOTS = "snapshots"  # step_NNNNNN.safetensors: sampling weights along the run (train.snapshot_every)


def build_model(cfg: RunConfig) -> torch.nn.Module:
    if cfg.model.arch == "dit":
        from .nn.dit import DIT

        return DIT(cfg.model)
    if cfg.model.arch == "ar":
        from .nn.ar import CausalTransformer

        return CausalTransformer(cfg.model)
    raise DidiError(f"unknown model.arch '{cfg.model.arch}' (choose dit or ar)")


@dataclass
class Run:
    """A loaded run: its directory, config, tokenizer and model (in eval mode)."""

    path: Path
    config: RunConfig
    tokenizer: object
    model: torch.nn.Module


def has_checkpoint(path: Path) -> bool:
    return (Path(path) / CHECKPOINT).is_file() or previous_checkpoint(Path(path) / CHECKPOINT).is_file()


def check_run_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DidiError(f"run directory {path} does not exist")
    if not (path / CONFIG).is_file():
        raise DidiError(f"{path} is not a didi run directory (no {CONFIG})")
    return path


def load_run(path: str | Path, device: str | torch.device = "cpu", weights: str = WEIGHTS) -> Run:
    from .tokenizers import Tokenizer

    path = check_run_dir(path)
    cfg = RunConfig.load(path / CONFIG)
    tok = Tokenizer.load(path / TOKENIZER_DIR)
    model = build_model(cfg)
    wpath = path / weights
    if not wpath.is_file():
        raise DidiError(f"{path} has no trained weights yet ({weights} missing)")
    state = load_weights(wpath)
    expected = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} (the config makes {tuple(expected[k].shape)})" for k, v in state.items()
              if k in expected and v.shape != expected[k].shape]
    if shapes:
        raise DidiError(f"weights in {wpath} do not match {path / CONFIG}: {len(shapes)} tensors of another shape, "
                        f"e.g. {shapes[0]}; the weights come from a run of another model shape")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise DidiError(f"weights in {wpath} do not match the config: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return Run(path=path, config=cfg, tokenizer=tok, model=model.to(device).eval())


DATA_COUNTS = "data.json"


def save_data_counts(out: Path, train_blocks) -> None:
    """Row layouts: how many training documents the run saw, cropped and skipped (`data.long_sequences`), and the
    row length the longest needed, saved beside the config."""
    if getattr(train_blocks, "rows", None):
        from .fileio import atomic_write_text

        atomic_write_text(Path(out) / DATA_COUNTS, json.dumps({**train_blocks.rows,
                                                               "row_length": train_blocks.block_size}) + "\n")


@contextmanager
def removed_if_start_fails(out: Path, enabled: bool = True):
    """Around the start of a new run, up to the moment its config is written: if anything fails (bad data, a wrong
    device, an interrupt), what the start wrote into `out` is removed again (the directory too when the start made
    it), so the same command can simply be run again. Files that were there before are left alone."""
    out = Path(out)
    existed = out.exists()
    before = set(out.iterdir()) if existed and out.is_dir() else set()
    try:
        yield
    except BaseException:
        if enabled and out.is_dir():
            for p in set(out.iterdir()) - before:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            if not existed and not any(out.iterdir()):
                out.rmdir()
        raise
