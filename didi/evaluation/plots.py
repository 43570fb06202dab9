"""Frontier and PPL-vs-NFE plots written atomically as PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..fileio import atomic_write  # noqa: E402


def _save(fig, path) -> None:
    """Written next to the target, then renamed (a crash never leaves a half-written PNG), with the permissions
    open() would give it."""
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _legend(ax) -> None:
    """Beside the axes when there are many lines, so no line hides behind it (bbox_inches="tight" keeps it)."""
    if len(ax.get_legend_handles_labels()[0]) > 6:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    else:
        ax.legend()


def plot_frontier(
    series: dict[str, list[tuple[float, float]]], path: str | os.PathLike, target_entropy: float | None = None,
    xlabel: str = "unigram entropy (nats)", ylabel: str = "generative perplexity", log_y: bool = True,
) -> None:
    """Gen-PPL (log) against unigram entropy (or any quality against any diversity), one line per series."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, pts in series.items():
        pts = sorted(pts)
        ax.plot([e for e, _ in pts], [p for _, p in pts], marker="o", label=label)
    if target_entropy is not None:
        ax.axvline(target_entropy, color="gray", linestyle="--", linewidth=1, label=f"target {target_entropy:.3g}")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax)
    _save(fig, path)


def plot_ppl_vs_nfe(series: dict[str, list[tuple[float, float]]], path: str | os.PathLike,
                    ylabel: str = "generative perplexity", log_y: bool = True) -> None:
    """Gen-PPL (log; or any quality) against number of function evaluations (log2), one line per series."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, pts in series.items():
        pts = sorted(pts)
        ax.plot([n for n, _ in pts], [p for _, p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax)
    _save(fig, path)
