"""FASTA in and out: protein sequences, plain or gzip, validated residue by residue.

`read_fasta` yields (header, sequence) with the sequence upper-cased, whitespace and a terminal `*` removed.
Residues outside the 20 standard amino acids and the ambiguous codes X B Z U O are an error naming the
file, line and record. The ambiguous codes follow `ambiguous`:
  "keep"   they stay (the amino tokenizer has a token for each);
  "map"    B -> D, Z -> E, U -> C, O -> K (the nearest standard residue); X stays X;
  "skip"   records that contain any of them are left out;
  "error"  they are an error like unknown residues.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DidiError
from .tokenizers import AMINO_ACIDS, AMINO_AMBIGUOUS

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".fasta.gz", ".fa.gz", ".faa.gz", ".fas.gz")
AMBIGUOUS_POLICIES = ("keep", "map", "skip", "error")
AMBIGUOUS_MAP = {"B": "D", "Z": "E", "U": "C", "O": "K"}
_STANDARD = frozenset(AMINO_ACIDS)
_AMBIGUOUS = frozenset(AMINO_AMBIGUOUS)


def is_fasta_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(FASTA_SUFFIXES)


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":  # gzip, whatever the file is called
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _clean(seq: str, header: str, where: str, ambiguous: str) -> str | None:
    seq = seq.upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    bad = set(seq) - _STANDARD
    if not bad:
        return seq
    unknown = bad - _AMBIGUOUS
    if unknown or ambiguous == "error":
        c = sorted(unknown or bad)[0]
        hint = "" if unknown else " (ambiguous code; use ambiguous='keep', 'map' or 'skip')"
        raise DidiError(f"{where}: residue {c!r} in record '{header}' is not an amino-acid code{hint}")
    if ambiguous == "skip":
        return None
    if ambiguous == "map":
        return "".join(AMBIGUOUS_MAP.get(c, c) for c in seq)
    return seq


def read_fasta(path: str | os.PathLike, ambiguous: str = "keep") -> Iterator[tuple[str, str]]:
    """(header, sequence) records of a FASTA file (plain or gzip). See the module docstring for `ambiguous`."""
    if ambiguous not in AMBIGUOUS_POLICIES:
        raise DidiError(f"ambiguous must be one of {', '.join(AMBIGUOUS_POLICIES)}, not {ambiguous!r}")
    path = Path(path)
    if not path.is_file():
        raise DidiError(f"FASTA file {path} does not exist")
    header, parts, start, count = None, [], 0, 0
    try:
        with _open(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    if header is not None:
                        seq = _clean("".join(parts), header, f"{path}:{start}", ambiguous)
                        if seq:
                            count += 1
                            yield header, seq
                    header, parts, start = line[1:].strip(), [], lineno
                elif header is None:
                    raise DidiError(f"{path}:{lineno}: not a FASTA file (expected a '>' header line first)")
                else:
                    parts.append("".join(line.split()))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise DidiError(f"cannot read {path} as FASTA: {e}") from None
    if header is not None:
        seq = _clean("".join(parts), header, f"{path}:{start}", ambiguous)
        if seq:
            count += 1
            yield header, seq
    if count == 0:
        raise DidiError(f"{path} holds no sequences")


def write_fasta(path: str | os.PathLike, records: Iterable[tuple[str, str]], width: int = 60) -> Path:
    """Write (header, sequence) records; gzip when the name ends in .gz. Written whole, then renamed."""
    path = Path(path)
    lines = []
    for header, seq in records:
        lines.append(f">{header}")
        lines += [seq[i:i + width] for i in range(0, len(seq), width)] or [""]
    data = ("\n".join(lines) + "\n").encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
