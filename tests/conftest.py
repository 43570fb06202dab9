import os
from pathlib import Path

import pytest
import torch

# DIDI_TEST_THREADS=1 leaves a core to a long run beside the suite
torch.set_num_threads(int(os.environ.get("DIDI_TEST_THREADS", min(2, os.cpu_count() or 1))))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def english_teacher(root: Path, docs: int = 300, steps: int = 30, length: int = 16) -> Path:
    """A teacher run at the test preset, trained for a few steps on the built-in English documents, in root/run."""
    import json

    from english_corpus import demo_documents

    import didi
    from didi.config import preset

    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_documents(docs)))
    cfg = preset("test", [f"data.source={corpus}", f"data.cache_dir={root / 'cache'}", f"train.max_steps={steps}",
                          "train.eval_every=0", f"model.length={length}"])
    didi.train(cfg, root / "run", progress=False)
    return root / "run"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared corpora not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def grammar_teacher(tmp_path):
    """A factory: grammar text -> (grammar path, teacher run) trained for a few steps on a corpus of that grammar,
    one text per row (the reference-language layout), at the test preset."""
    import didi
    from didi.config import preset
    from didi.language import Grammar, write_corpus

    def build(text: str, texts: int = 300, length: int = 24, steps: int = 20) -> tuple[Path, Path]:
        g = tmp_path / "tiny.grammar"
        g.write_text(text)
        corpus = tmp_path / "c.jsonl"
        write_corpus(Grammar.load(str(g)), texts, 0, corpus)
        cfg = preset("test", [f"data.source={corpus}", "data.layout=rows", f"data.cache_dir={tmp_path / 'cache'}",
                              f"model.length={length}", f"train.max_steps={steps}", "train.eval_every=0",
                              "data.tokenizer=bpe:300"])
        didi.train(cfg, tmp_path / "teacher", progress=False)
        return g, tmp_path / "teacher"

    return build
