"""Reference languages: probabilistic grammars with an exact scorer, used to judge samples exactly."""

from .grammar import Grammar, builtin_names, check, render, split_sentences, words_of, write_corpus
from .metrics import score_texts
from .parse import Parser

__all__ = ["Grammar", "Parser", "builtin_names", "check", "render", "score_texts", "split_sentences", "words_of",
           "write_corpus"]
