"""Honest evaluation: gen-PPL under an independent judge LM, unigram entropy, and the PPL/entropy frontier."""

from didi.evaluation.judge import Judge, load_judge
from didi.evaluation.metrics import frontier, interpolate_at_entropy, mean_unigram_entropy, unigram_entropy
from didi.evaluation.plots import plot_frontier, plot_ppl_vs_nfe

__all__ = [
    "Judge",
    "load_judge",
    "unigram_entropy",
    "mean_unigram_entropy",
    "interpolate_at_entropy",
    "frontier",
    "plot_frontier",
    "plot_ppl_vs_nfe",
]
