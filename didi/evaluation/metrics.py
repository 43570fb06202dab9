"""Sample-diversity metrics and the gen-PPL/entropy frontier."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from didi.errors import DidiError


def _as_array(ids) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids).reshape(-1)


def unigram_entropy(ids) -> float:
    """Entropy (nats) of the empirical token distribution of one sequence of token ids."""
    arr = _as_array(ids)
    if arr.size == 0:
        raise DidiError("unigram_entropy needs at least one token")
    _, counts = np.unique(arr, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mean_unigram_entropy(batch: Iterable | torch.Tensor) -> float:
    """Per-sample unigram entropy averaged over samples (rows of a 2-D tensor, or a list of sequences)."""
    rows = list(batch)
    if not rows:
        raise DidiError("mean_unigram_entropy needs at least one sample")
    return float(np.mean([unigram_entropy(r) for r in rows]))


def interpolate_at_entropy(points: Sequence[tuple[float, float]], target_entropy: float,
                           log_y: bool = True) -> float | None:
    """Gen-PPL at `target_entropy`, linear in log(PPL) between the bracketing (entropy, ppl) points; None if outside.
    log_y=False interpolates linearly (a share such as valid sentences, where 0 is a value)."""
    pts = sorted((float(e), float(p)) for e, p in points
                 if math.isfinite(e) and math.isfinite(p) and (p > 0 or not log_y))
    if not pts or not pts[0][0] <= target_entropy <= pts[-1][0]:
        return None
    xs = np.array([e for e, _ in pts])
    if not log_y:
        return float(np.interp(target_entropy, xs, [p for _, p in pts]))
    ys = np.log([p for _, p in pts])
    return float(math.exp(np.interp(target_entropy, xs, ys)))


def frontier(rows: Sequence[dict]) -> list[dict]:
    """Pareto set over rows with keys entropy and gen_ppl: no other row has >= entropy and lower PPL."""
    for r in rows:
        if "entropy" not in r or "gen_ppl" not in r:
            raise DidiError("frontier rows need 'entropy' and 'gen_ppl' keys")
    keep = [
        r
        for r in rows
        if not any(o is not r and o["entropy"] >= r["entropy"] and o["gen_ppl"] < r["gen_ppl"] for o in rows)
    ]
    return sorted(keep, key=lambda r: r["entropy"])
