"""Data: sources -> a cached memory-mapped token file -> fixed-length blocks, and their batch order.

Text: documents are joined with EOS and cut into blocks of `block_size` tokens ("wrap", as in the
OpenWebText setup), or, with `layout="rows"`, one document per row: EOS, its ids, then EOS to the end
of the row (the first EOS is never masked and anchors the positions after it; the model learns where a
text ends; a sample is read from position 1 up to its next EOS). Protein
(`domain="protein"`, FASTA sources): one sequence per row, BOS residues EOS PAD ..., so lengths vary.
In both row layouts a document longer than a row is cropped to its first ids (no EOS) or skipped
(`long_sequences`). Tokenization happens once per (source, tokenizer, layout); the result is cached.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .errors import DidiError
from .fasta import FASTA_SUFFIXES, is_fasta_path, read_fasta

TEXT_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _source_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if not path.exists():
        raise DidiError(f"data source {source} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES + FASTA_SUFFIXES))
        if not files:
            raise DidiError(f"directory {source} holds no .txt, .jsonl or FASTA files")
        return files
    if not path.name.endswith(TEXT_SUFFIXES + FASTA_SUFFIXES):
        raise DidiError(f"unsupported data file {source}: use .txt, .jsonl (field 'text'), .fasta[.gz], a directory, "
                        "or hf:NAME")
    return [path]


def read_documents(source: str, ambiguous: str = "keep") -> Iterator[str]:
    """Yield documents: a .txt file is one document, a .jsonl file one per line (field `text`), a FASTA file
    one per record (the residues; `ambiguous` as in `didi.fasta.read_fasta`)."""
    if source.startswith("hf:"):
        yield from _read_hf(source[3:])
        return
    count = 0
    for path in _source_files(source):
        if is_fasta_path(path):
            for _, seq in read_fasta(path, ambiguous):
                count += 1
                yield seq
            continue
        try:
            with _open_text(path) as f:
                if ".jsonl" in path.name:
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            text = json.loads(line)["text"]
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise DidiError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from None
                        if not isinstance(text, str):
                            raise DidiError(f"{path}:{lineno}: 'text' is {json.dumps(text)}, not a string")
                        if text:
                            count += 1
                            yield text
                else:
                    text = f.read()
                    if text.strip():
                        count += 1
                        yield text
        except (OSError, UnicodeDecodeError) as e:
            raise DidiError(f"cannot read {path}: {e}") from None
    if count == 0:
        raise DidiError(f"data source {source} is empty (no documents with text)")


def _read_hf(spec: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DidiError("hf: sources need the datasets package: pip install 'didi[hf]'") from None
    name, _, config = spec.partition(":")
    try:
        if Path(name).exists():  # a dataset saved with save_to_disk
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"]
        else:
            ds = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # the hub, the cache and the disk format all raise their own types
        raise DidiError(f"cannot load Hugging Face dataset '{spec}' (hub unreachable and not cached?): "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if "text" not in ds.column_names:
        raise DidiError(f"dataset '{spec}' has no 'text' column (columns: {', '.join(ds.column_names)})")
    for text in ds["text"]:
        if text:
            yield text


def _source_identity(source: str) -> str:
    if source.startswith("hf:"):
        return source
    parts = [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in _source_files(source)]
    return "\n".join(parts)


@dataclass
class TokenBlocks:
    """Packed blocks over a flat token array (a memmap): block i is tokens[i*L : (i+1)*L]."""

    tokens: np.ndarray
    block_size: int
    rows: dict = field(default_factory=dict)  # row layouts: documents, cropped, skipped, longest (training split)

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    @property
    def num_tokens(self) -> int:
        return len(self) * self.block_size

    def get(self, idx: Sequence[int] | np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        rows = self.tokens[: self.num_tokens].reshape(-1, self.block_size)[idx]
        return torch.from_numpy(rows.astype(np.int64))


def cache_dir(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("DIDI_CACHE", Path.home() / ".cache" / "didi")) / "tokens"


def sequence_row(ids: list[int], tokenizer, length: int, long_sequences: str = "crop") -> list[int] | None:
    """One protein row: BOS ids EOS PAD ... of exactly `length` ids; a longer sequence is cropped to its first
    residues without EOS ("crop") or dropped ("skip": None)."""
    if len(ids) <= length - 2:
        return [tokenizer.bos_id, *ids, tokenizer.eos_id] + [tokenizer.pad_id] * (length - 2 - len(ids))
    if long_sequences == "skip":
        return None
    return [tokenizer.bos_id, *ids[: length - 1]]


def text_row(ids: list[int], tokenizer, length: int, long_sequences: str = "crop") -> list[int] | None:
    """One text row of exactly `length` ids: EOS (the start: never masked, it anchors every position after it),
    the document's ids, then EOS to the end (at least one ends the text); a longer document is cropped to its
    first ids ("crop") or dropped ("skip": None)."""
    eos = tokenizer.eos_id
    if len(ids) < length - 1:
        return [eos, *ids] + [eos] * (length - 1 - len(ids))
    return None if long_sequences == "skip" else [eos, *ids[: length - 1]]


def _tokenize_to_cache(docs: list[str], tokenizer, path: Path, show_progress: bool, what: str,
                       rows=None, capacity: int = 0) -> dict:
    from tqdm.auto import tqdm

    dtype = np.uint16 if tokenizer.model_vocab_size <= 65536 else np.uint32
    chunks, n = [], 0
    stats = {"documents": len(docs), "cropped": 0, "skipped": 0, "longest": 0}  # longest: ids + row specials
    bar = tqdm(total=len(docs), desc=f"tokenizing {what}", unit="doc", disable=not show_progress)
    for i in range(0, len(docs), 256):
        for ids in tokenizer.encode_batch(docs[i:i + 256]):
            if rows is not None:
                stats["longest"] = max(stats["longest"], len(ids) + 2)
                long = len(ids) > capacity
                ids = rows(ids)
                if ids is None:
                    stats["skipped"] += 1
                    continue
                stats["cropped"] += long
            else:
                ids.append(tokenizer.eos_id)
            chunks.append(np.asarray(ids, dtype=dtype))
            n += len(ids)
        bar.update(min(256, len(docs) - i))
    bar.close()
    arr = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    arr.tofile(tmp)
    os.replace(tmp, path)
    return stats


def _load_or_build(key: str, docs_fn, tokenizer, cfg: DataConfig, show_progress: bool, what: str,
                   rows=None, capacity: int = 0) -> tuple[np.ndarray, dict]:
    """The cached ids of one split (built when missing or damaged) and its row counts (documents, cropped,
    skipped, longest; empty for caches written before the counts were kept)."""
    directory = cache_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    path, meta_path = directory / f"{key}.bin", directory / f"{key}.json"
    dtype = np.uint16 if tokenizer.model_vocab_size <= 65536 else np.uint32
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:  # a damaged cache entry is rebuilt
            meta = {}
        if isinstance(meta, dict) and meta.get("num_tokens") == path.stat().st_size // np.dtype(dtype).itemsize:
            return _open_tokens(path, dtype), meta.get("rows", {})
    stats = _tokenize_to_cache(docs_fn(), tokenizer, path, show_progress, what, rows, capacity)
    from .fileio import atomic_write_text

    num_tokens = path.stat().st_size // np.dtype(dtype).itemsize
    meta = {"what": what, "num_tokens": num_tokens, "tokenizer": tokenizer.fingerprint(),
            "rows": stats if rows is not None else {}}
    atomic_write_text(meta_path, json.dumps(meta) + "\n")
    return _open_tokens(path, dtype), meta["rows"]


def _open_tokens(path: Path, dtype) -> np.ndarray:
    """The cached ids, memory-mapped; an empty array for an empty file (a held-out split with no document), which
    numpy cannot map."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _split_documents(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Hold out a deterministic, evenly spread share of documents (at least one when there are two)."""
    if len(docs) < 2:
        return docs, []
    n_valid = min(len(docs) - 1, max(1, round(len(docs) * fraction)))
    step = len(docs) / n_valid
    held = {int(i * step) for i in range(n_valid)}
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def prepare_data(cfg: DataConfig, tokenizer, block_size: int,
                 show_progress: bool = True) -> tuple[TokenBlocks, TokenBlocks]:
    """Tokenize (or load from cache) the training and held-out data and pack both into blocks."""
    if not cfg.source:
        raise DidiError("no data source given")
    rows = None  # ids -> one row (or None: skipped), for the row layouts
    layout = ""
    capacity = block_size - 2  # a document's ids that fit in a row beside its specials (BOS/EOS, EOS)
    if cfg.domain not in ("text", "protein"):
        raise DidiError(f"data.domain must be 'text' or 'protein', not {cfg.domain!r}")
    if cfg.layout not in ("packed", "rows"):
        raise DidiError(f"data.layout must be 'packed' or 'rows', not {cfg.layout!r}")
    if cfg.long_sequences not in ("auto", "crop", "skip"):
        raise DidiError(f"data.long_sequences must be 'auto', 'crop' or 'skip', not {cfg.long_sequences!r}")
    crop = "skip" if cfg.long_sequences == "skip" else "crop"  # auto crops (up to LONG_SHARE of the documents)
    if cfg.domain == "protein":
        if tokenizer.bos_id is None or tokenizer.pad_id is None:
            raise DidiError("protein data needs a tokenizer with BOS and PAD ids (use tokenizer 'amino')")
        rows = lambda ids: sequence_row(ids, tokenizer, block_size, crop)
        layout = f"\0rows{block_size}:{crop}:{cfg.ambiguous}"
    elif cfg.layout == "rows":
        rows = lambda ids: text_row(ids, tokenizer, block_size, crop)
        layout = f"\0textrows-anchored{block_size}:{crop}"

    def docs(source):
        return list(read_documents(source, cfg.ambiguous))

    def key_of(source):
        return hashlib.sha256((_source_identity(source) + "\0" + tokenizer.fingerprint() + layout).encode()
                              ).hexdigest()[:24]

    base = key_of(cfg.source)
    if cfg.valid_source:
        train, counts = _load_or_build(f"{base}-all", lambda: docs(cfg.source), tokenizer, cfg, show_progress,
                                       "train", rows, capacity)
        valid, _ = _load_or_build(f"{key_of(cfg.valid_source)}-all", lambda: docs(cfg.valid_source), tokenizer, cfg,
                                  show_progress, "valid", rows, capacity)
    else:
        key = f"{base}-split{cfg.valid_fraction:g}"
        docs_cache: dict[str, tuple[list[str], list[str]]] = {}

        def split():
            if "s" not in docs_cache:
                docs_cache["s"] = _split_documents(docs(cfg.source), cfg.valid_fraction)
            return docs_cache["s"]

        train, counts = _load_or_build(f"{key}-train", lambda: split()[0], tokenizer, cfg, show_progress, "train",
                                       rows, capacity)
        valid, _ = _load_or_build(f"{key}-valid", lambda: split()[1], tokenizer, cfg, show_progress, "valid", rows,
                                  capacity)
        if len(valid) < block_size and len(train) >= 2 * block_size and rows is None:
            # one document (or tiny held-out share): hold out the tail of the token stream instead
            n_valid = max(block_size, int(len(train) * cfg.valid_fraction) // block_size * block_size)
            train, valid = train[:-n_valid], train[-n_valid:]
    _check_long_documents(cfg, counts, block_size, show_progress)
    train_blocks, valid_blocks = TokenBlocks(train, block_size, counts), TokenBlocks(valid, block_size)
    if len(train_blocks) == 0:
        raise DidiError(f"not enough data: {len(train)} training tokens cannot fill one block of {block_size}")
    return train_blocks, valid_blocks


LONG_SHARE = 0.01  # data.long_sequences "auto": crop up to this share of the training documents, refuse beyond


def _check_long_documents(cfg: DataConfig, counts: dict, block_size: int, show_progress: bool) -> None:
    """Row layouts: say how many training documents were cropped or skipped; with long_sequences "auto" more than
    LONG_SHARE cropped is an error naming the row length that fits them."""
    if not counts or not (counts.get("cropped") or counts.get("skipped")):
        return
    n, cropped, skipped, longest = (counts[k] for k in ("documents", "cropped", "skipped", "longest"))
    if cfg.long_sequences == "auto" and cropped > LONG_SHARE * n:
        raise DidiError(f"{cropped} of {n} training documents ({cropped / n:.1%}) are longer than a row of "
                        f"{block_size} tokens (the longest needs {longest}): set model.length={longest}, or "
                        "data.long_sequences=crop to train on their first tokens, or "
                        "data.long_sequences=skip to leave them out")
    if show_progress:
        what = f"{cropped} cropped to the row's first tokens" if cropped else f"{skipped} skipped"
        print(f"didi: data: {what} of {n} training documents longer than a row of {block_size} tokens (the "
              f"longest needs {longest})", flush=True)


def iterate_blocks(blocks: TokenBlocks, batch_size: int, max_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Blocks in their stored order (validation): the same batches every time."""
    n = len(blocks)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield blocks.get(np.arange(start, min(start + batch_size, n)))


class BlockSampler:
    """Shuffled block order, reshuffled each epoch from (seed, epoch); its position resumes exactly."""

    def __init__(self, num_blocks: int, global_batch: int, seed: int):
        if num_blocks < 1:
            raise DidiError("no training blocks")
        self.num_blocks, self.global_batch, self.seed = num_blocks, global_batch, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    def next_indices(self) -> np.ndarray:
        out = []
        need = self.global_batch
        while need:
            take = self._order[self.position:self.position + need]
            out.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= self.num_blocks:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
        return np.concatenate(out)

    @staticmethod
    def rank_slice(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
        if len(indices) % world:
            raise DidiError(f"batch of {len(indices)} cannot be split evenly across {world} processes")
        per = len(indices) // world
        return indices[rank * per:(rank + 1) * per]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_blocks": self.num_blocks}

    def load_state_dict(self, d: dict) -> None:
        if d["num_blocks"] != self.num_blocks:
            raise DidiError(f"the data changed since the checkpoint ({d['num_blocks']} blocks then, "
                            f"{self.num_blocks} now); resume needs the same data")
        self.epoch, self.position = d["epoch"], d["position"]
        self._order = self._permutation(self.epoch)
