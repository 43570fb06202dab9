import json

import pytest

from didi.errors import DidiError
from didi.tokenizers import Tokenizer, amino_tokenizer, get_tokenizer, gpt2_tokenizer, train_bpe


def test_gpt2_exact_ids_and_mask():
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>") == [50256]
    assert (tok.vocab_size, tok.mask_id, tok.eos_id, tok.model_vocab_size) == (50257, 50257, 50256, 50258)
    for text in ["Hello world", " leading space", "Ünïcödé — ✓ 日本語", "tabs\tand\nnewlines\n\n", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([15496, 50257, 995]) == "Hello[MASK] world"


def test_gpt2_round_trips_the_english_corpus(shared_data):
    tok = gpt2_tokenizer()
    lines = (shared_data / "english" / "valid.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    assert len(texts) > 100
    for text, ids in zip(texts, tok.encode_batch(texts)):
        assert tok.decode(ids) == text


def test_trained_bpe_round_trip_and_save_load(tmp_path):
    texts = [f"story number {i}: the fox and the dog ran to the river." for i in range(300)]
    tok = train_bpe(texts, 320, show_progress=False)
    assert tok.kind == "bpe" and tok.mask_id == tok.vocab_size and tok.vocab_size <= 320
    assert tok.decode(tok.encode(texts[7])) == texts[7]
    tok.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert again.encode(texts[3]) == tok.encode(texts[3]) and again.eos_id == tok.eos_id
    assert get_tokenizer(str(tmp_path / "tok")).vocab_size == tok.vocab_size
    # same data, same tokenizer
    assert train_bpe(texts, 320, show_progress=False).encode(texts[1]) == tok.encode(texts[1])


def test_amino_tokenizer():
    tok = amino_tokenizer()
    ids = tok.encode("MKTAYIAKQR")
    assert len(ids) == 10 and tok.decode(ids) == "MKTAYIAKQR"
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "MKTAYIAKQR"
    assert tok.mask_id == tok.vocab_size and tok.decode([tok.mask_id]) == "[MASK]"


def test_bad_tokenizer_specs():
    with pytest.raises(DidiError, match="unknown tokenizer"):
        get_tokenizer("nonsense")
    with pytest.raises(DidiError, match="bpe:N"):
        get_tokenizer("bpe:lots")
    with pytest.raises(DidiError, match="at least 300"):
        train_bpe(["a"], 50)
    with pytest.raises(DidiError, match="no saved tokenizer"):
        Tokenizer.load("/nonexistent/dir")
