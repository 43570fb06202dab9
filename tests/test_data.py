import gzip
import json

import numpy as np
import pytest

import didi.data as data
from didi.config import DataConfig
from didi.data import BlockSampler, iterate_blocks, prepare_data, read_documents
from didi.errors import DidiError
from didi.tokenizers import train_bpe

DOCS = [f"document {i} says hello to the world and to the river number {i % 7}." for i in range(60)]


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture
def tok():
    return train_bpe(DOCS, 300, show_progress=False)


def test_sources(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:3])
    (tmp_path / "b.txt").write_text("a whole file is one document\n\nwith paragraphs")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    assert list(read_documents(str(tmp_path / "a.jsonl"))) == DOCS[:3]
    assert len(list(read_documents(str(tmp_path / "b.txt")))) == 1
    assert list(read_documents(str(tmp_path / "c.jsonl.gz"))) == ["zipped"]
    assert len(list(read_documents(str(tmp_path)))) == 5


def test_bad_sources(tmp_path):
    with pytest.raises(DidiError, match="does not exist"):
        list(read_documents(str(tmp_path / "missing.jsonl")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DidiError, match="empty"):
        list(read_documents(str(tmp_path / "empty.jsonl")))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(DidiError, match="bad.jsonl:2"):
        list(read_documents(str(tmp_path / "bad.jsonl")))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DidiError, match="unsupported"):
        list(read_documents(str(tmp_path / "x.csv")))


def test_packing_joins_documents_with_eos_and_caches(tmp_path, tok, monkeypatch):
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    cfg = DataConfig(source=str(src), valid_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    train, valid = prepare_data(cfg, tok, 16, show_progress=False)
    assert len(train) > 0 and len(valid) > 0 and train.get([0]).shape == (1, 16)
    flat = np.asarray(train.tokens).tolist()
    pieces = tok.decode(flat).split("<|endoftext|>")
    held = {10 * i for i in range(6)}  # 10 % of 60 documents, evenly spread
    assert pieces[:-1] == [d for i, d in enumerate(DOCS) if i not in held]
    # second call: served from the cache, no tokenization
    monkeypatch.setattr(data, "_tokenize_to_cache", lambda *a, **k: pytest.fail("tokenized again"))
    train2, _ = prepare_data(cfg, tok, 16, show_progress=False)
    assert np.array_equal(np.asarray(train2.tokens), np.asarray(train.tokens))


def test_too_little_data(tmp_path, tok):
    src = write_jsonl(tmp_path / "d.jsonl", ["hi", "there"])
    with pytest.raises(DidiError, match="not enough data"):
        prepare_data(DataConfig(source=str(src), cache_dir=str(tmp_path / "c")), tok, 512, show_progress=False)


def test_validation_order_is_fixed(tmp_path, tok):
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    train, _ = prepare_data(DataConfig(source=str(src), cache_dir=str(tmp_path / "c")), tok, 8, show_progress=False)
    a = [b.clone() for b in iterate_blocks(train, 4, 3)]
    b = list(iterate_blocks(train, 4, 3))
    assert len(a) == 3 and all((x == y).all() for x, y in zip(a, b))


def test_block_sampler_epochs_resume_and_rank_slices():
    s = BlockSampler(10, 4, seed=1)
    first_epoch = np.concatenate([s.next_indices() for _ in range(2)] + [s.next_indices()[:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    s = BlockSampler(10, 4, seed=1)
    s.next_indices()
    state = s.state_dict()
    expected = [s.next_indices() for _ in range(5)]
    r = BlockSampler(10, 4, seed=1)
    r.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(expected, [r.next_indices() for _ in range(5)]))
    idx = np.arange(8)
    parts = [BlockSampler.rank_slice(idx, k, 2) for k in range(2)]
    assert np.array_equal(np.concatenate(parts), idx)
    with pytest.raises(DidiError):
        BlockSampler.rank_slice(np.arange(7), 0, 2)


def test_text_rows_layout(tmp_path, tok):
    eos = tok.eos_id
    assert data.text_row([5, 6], tok, 6) == [eos, 5, 6, eos, eos, eos]
    assert data.text_row([5, 6, 7, 8, 9], tok, 6) == [eos, 5, 6, 7, 8, 9]  # cropped: no room for the end
    assert data.text_row([5, 6, 7, 8, 9], tok, 6, "skip") is None
    assert data.text_row([5, 6, 7, 8], tok, 6) == [eos, 5, 6, 7, 8, eos]
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    cfg = DataConfig(source=str(src), layout="rows", cache_dir=str(tmp_path / "cache"), long_sequences="skip")
    train, valid = prepare_data(cfg, tok, 32, show_progress=False)
    rows = train.get(np.arange(len(train))).numpy()
    assert len(train) + len(valid) == len(DOCS)  # one document per row
    assert (rows[:, 0] == eos).all() and (rows[:, -1] == eos).all()
    decoded = {tok.decode(r[1:].tolist()[:r[1:].tolist().index(eos)]) for r in rows}
    assert decoded <= set(DOCS) and len(decoded) == len(train)  # each row is one whole document
    with pytest.raises(DidiError, match="layout must be"):
        prepare_data(DataConfig(source=str(src), layout="wrap", cache_dir=str(tmp_path / "c2")), tok, 32)


def test_one_document_source_trains_with_an_empty_held_out_split(tmp_path, tok):
    """One plain-text file is one document: the document split holds nothing out (an empty token file, which numpy
    cannot memory-map); packed data then holds out the tail of the stream, rows data validates on nothing."""
    one = tmp_path / "one.txt"
    one.write_text(" ".join(DOCS * 3))
    cfg = DataConfig(source=str(one), cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # built, then read back from the cache
        train, valid = prepare_data(cfg, tok, 16, show_progress=False)
        assert len(train) > 0 and len(valid) > 0
    rows = DataConfig(source=str(one), cache_dir=str(tmp_path / "cache"), layout="rows", long_sequences="crop")
    train, valid = prepare_data(rows, tok, 16, show_progress=False)
    assert len(train) == 1 and len(valid) == 0
