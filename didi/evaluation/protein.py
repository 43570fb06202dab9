"""Protein sample metrics: composition and length distances to natural sequences, diversity, novelty,
low complexity, and (when the user has the weights) ESMFold pLDDT.

Identity between two sequences is alignment-free here: the characters in the matching blocks that
`difflib.SequenceMatcher` finds (a longest-common-substring recursion), divided by the longer length.
It tracks alignment identity closely for similar sequences and stays low for unrelated ones; it is not
a Smith-Waterman score.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from difflib import SequenceMatcher

import numpy as np

from ..errors import DidiError
from ..tokenizers import AMINO_ACIDS


def composition(seqs: Sequence[str], pseudocount: float = 0.0) -> np.ndarray:
    """Frequencies of the 20 standard residues over all sequences (other codes ignored)."""
    counts = np.full(20, pseudocount, dtype=np.float64)
    index = {a: i for i, a in enumerate(AMINO_ACIDS)}
    for s in seqs:
        for c in s:
            i = index.get(c)
            if i is not None:
                counts[i] += 1
    if counts.sum() == 0:
        raise DidiError("no standard residues to count")
    return counts / counts.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats; terms with p = 0 contribute nothing."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = p > 0
    if np.any(q[m] == 0):
        return math.inf
    return float((p[m] * np.log(p[m] / q[m])).sum())


def js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in nats (symmetric, at most log 2)."""
    m = 0.5 * (np.asarray(p, float) + np.asarray(q, float))
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def length_distance(a: Sequence[int], b: Sequence[int]) -> dict:
    """Wasserstein-1 distance (residues) and the Kolmogorov-Smirnov statistic between two length samples."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if len(a) == 0 or len(b) == 0:
        raise DidiError("length_distance needs two non-empty samples")
    grid = np.union1d(a, b)
    ca = np.searchsorted(a, grid, side="right") / len(a)
    cb = np.searchsorted(b, grid, side="right") / len(b)
    w1 = float(np.sum(np.abs(ca - cb)[:-1] * np.diff(grid))) if len(grid) > 1 else 0.0
    return {"length_w1": w1, "length_ks": float(np.max(np.abs(ca - cb)))}


def identity(a: str, b: str) -> float:
    if not a or not b:
        return 0.0
    matched = sum(block.size for block in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
    return matched / max(len(a), len(b))


def diversity(seqs: Sequence[str], subsample: int = 64, seed: int = 0) -> dict:
    """Fraction of unique sequences, and mean pairwise identity over a random subsample."""
    if not seqs:
        raise DidiError("diversity needs sequences")
    sub = random.Random(seed).sample(list(seqs), min(subsample, len(seqs)))
    pairs = [identity(sub[i], sub[j]) for i in range(len(sub)) for j in range(i + 1, len(sub))]
    return {"unique_frac": len(set(seqs)) / len(seqs), "mean_pairwise_identity": float(np.mean(pairs)) if pairs
            else float("nan")}


def novelty(seqs: Sequence[str], reference: Sequence[str], subsample: int = 32, ref_subsample: int = 500,
            seed: int = 0) -> dict:
    """Max identity of each (subsampled) generated sequence to (subsampled) training sequences: mean and max."""
    rng = random.Random(seed)
    gen = rng.sample(list(seqs), min(subsample, len(seqs)))
    ref = rng.sample(list(reference), min(ref_subsample, len(reference)))
    if not gen or not ref:
        raise DidiError("novelty needs generated and reference sequences")
    best = [max(identity(g, r) for r in ref) for g in gen]
    return {"novelty_max_identity_mean": float(np.mean(best)), "novelty_max_identity_max": float(np.max(best))}


def low_complexity_fraction(seqs: Sequence[str], window: int = 12, threshold_bits: float = 2.2) -> float:
    """Share of residues covered by a window whose Shannon entropy is below `threshold_bits` (SEG-like)."""
    covered = total = 0
    for s in seqs:
        total += len(s)
        if len(s) < window:
            continue
        mark = np.zeros(len(s), dtype=bool)
        for i in range(len(s) - window + 1):
            _, c = np.unique(list(s[i:i + window]), return_counts=True)
            p = c / window
            if -(p * np.log2(p)).sum() < threshold_bits:
                mark[i:i + window] = True
        covered += int(mark.sum())
    return covered / total if total else 0.0


def repeat_fraction(seqs: Sequence[str], run: int = 5) -> float:
    """Share of sequences containing a single-residue run of at least `run` (e.g. AAAAA)."""
    if not seqs:
        return 0.0
    hit = 0
    for s in seqs:
        count, prev = 0, ""
        for c in s:
            count = count + 1 if c == prev else 1
            prev = c
            if count >= run:
                hit += 1
                break
    return hit / len(seqs)


def protein_metrics(seqs: Sequence[str], heldout: Sequence[str], train: Sequence[str] | None = None,
                    seed: int = 0) -> dict:
    """Every sequence-only metric at once (no models needed)."""
    seqs = [s for s in seqs if s]
    if not seqs:
        raise DidiError("no non-empty generated sequences")
    pc, qc = composition(seqs, 1e-6), composition(heldout, 1e-6)
    out = {"num": len(seqs), "mean_length": float(np.mean([len(s) for s in seqs])),
           "composition_kl": kl(pc, qc), "composition_js": js(pc, qc),
           **length_distance([len(s) for s in seqs], [len(s) for s in heldout]),
           **diversity(seqs, seed=seed), "low_complexity_frac": low_complexity_fraction(seqs),
           "repeat_frac": repeat_fraction(seqs)}
    if train:
        out.update(novelty(seqs, train, seed=seed))
    return out


def esmfold_plddt(seqs: Sequence[str], model: str = "facebook/esmfold_v1", device: str = "cpu") -> list[float]:
    """Mean pLDDT per sequence from ESMFold via `transformers` (needs the weights locally or the hub)."""
    try:
        import transformers
    except ImportError:
        raise DidiError("pLDDT needs transformers: pip install transformers") from None
    import os

    import torch

    local = os.path.isdir(model)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model, local_files_only=local)
        esm = transformers.EsmForProteinFolding.from_pretrained(model, local_files_only=local).to(device).eval()
    except Exception as e:  # hub, network and weight errors all mean "not available here"
        raise DidiError(f"cannot load ESMFold '{model}': {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        ) from None
    scores = []
    with torch.no_grad():
        for s in seqs:
            ids = tok([s], return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
            out = esm(ids)
            plddt = out.plddt[0].float()  # per residue (and atom); 0-1 in recent transformers releases
            scores.append(float(plddt.mean()) * (100.0 if float(plddt.max()) <= 1 else 1.0))
    return scores
