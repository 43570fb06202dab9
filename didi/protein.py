"""Protein rows: the length distribution a run learned from, and the clamp that gives samples those lengths.

A protein run stores one sequence per row (BOS residues EOS PAD ...). Training never masks the BOS, EOS
and PAD tokens, so the model always knows how long the protein it fills in is; sampling draws a length
from the training rows' length histogram (`lengths.json` in the run directory), fixes BOS, EOS and PAD
around it, and lets the sampler write the residues (never a residue code absent from training).
Rows that were cropped (no EOS) are a length class of their own: all `length - 1` positions are residues.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import DidiError

LENGTHS = "lengths.json"


def length_histogram(rows: np.ndarray, tokenizer) -> dict:
    """counts[n] = training rows with n residues (n = L - 1: cropped rows, which carry no EOS)."""
    rows = np.asarray(rows)
    L = rows.shape[1]
    special = (rows == tokenizer.bos_id) | (rows == tokenizer.eos_id) | (rows == tokenizer.pad_id)
    n = (~special).sum(1)
    counts = np.bincount(n, minlength=L)[:L]
    seen = np.bincount(rows[~special].astype(np.int64), minlength=tokenizer.vocab_size)
    return {"length": L, "counts": counts.tolist(), "rows": int(len(rows)),
            "unseen_residue_ids": [int(i) for i in np.flatnonzero(seen == 0)]}


def save_lengths(run_dir: str | Path, blocks, tokenizer) -> None:
    from .fileio import atomic_write_text

    rows = blocks.tokens[: blocks.num_tokens].reshape(-1, blocks.block_size)
    atomic_write_text(Path(run_dir) / LENGTHS, json.dumps(length_histogram(rows, tokenizer)) + "\n")


def load_lengths(run_dir: str | Path | None) -> dict:
    path = Path(run_dir) / LENGTHS if run_dir is not None else None
    if path is None or not path.is_file():
        raise DidiError(f"a protein run needs {LENGTHS} (the training length histogram) in its directory")
    from .fileio import read_json

    return read_json(path)


def draw_lengths(hist: dict, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`num` residue counts drawn from the histogram (float64 draw)."""
    from .sampling import sample_categorical

    counts = torch.tensor(hist["counts"], dtype=torch.float64)
    if counts.sum() <= 0:
        raise DidiError("the length histogram is empty")
    return sample_categorical(counts.expand(num, -1), generator).cpu()


def length_clamp(lengths: torch.Tensor, L: int, tokenizer) -> torch.Tensor:
    """[B, L] clamp: BOS, `n` free positions (-1), EOS, PAD ...; n = L - 1 leaves no room for EOS (cropped)."""
    if (lengths < 1).any() or (lengths > L - 1).any():
        raise DidiError(f"protein lengths must be in 1..{L - 1}")
    pos = torch.arange(L)[None]
    n = lengths[:, None]
    clamp = torch.full((len(lengths), L), tokenizer.pad_id, dtype=torch.long)
    clamp[:, 0] = tokenizer.bos_id
    clamp[(pos >= 1) & (pos <= n)] = -1
    clamp[(pos == n + 1).expand_as(clamp)] = tokenizer.eos_id
    return clamp


def residues(ids: list[int], tokenizer) -> str:
    """The residue string of one generated row: tokens between BOS and the first EOS/PAD, specials removed."""
    out = []
    for i in ids:
        if i in (tokenizer.eos_id, tokenizer.pad_id):
            break
        if i == tokenizer.bos_id:
            continue
        out.append(i)
    return tokenizer.decode(out)
