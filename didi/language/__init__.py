"""Reference languages: probabilistic grammars with an exact scorer, used to judge samples exactly."""

from .grammar import Grammar, builtin_names, render, split_sentences, words_of, write_corpus
from .metrics import score_texts
from .parse import Parser, check
from .prompts import Prompt, heldout_prompts, make_prompt, prompt_of, score_prompted

__all__ = ["Grammar", "Parser", "Prompt", "builtin_names", "check", "heldout_prompts", "make_prompt", "prompt_of",
           "render", "score_prompted", "score_texts", "split_sentences", "words_of", "write_corpus"]
