"""didi's file I/O in one place: atomic writes (a temp file in the same directory, then a rename), reads that turn a
damaged file into one clear error naming it, and the two-deep checkpoint rotation.

Nothing here imports the rest of didi (only `errors`), so configs, tokenizers and runs can all use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import DidiError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the file gets what open() would have given it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def atomic_write_lines(path: Path, lines) -> None:
    """Write an iterable of lines as they come (one per line) into a temporary file, renamed over `path` at the
    end: a failure part-way leaves `path` as it was."""
    def write(tmp):
        with open(tmp, "w") as f:
            for line in lines:
                f.write(line + "\n")
    atomic_write(path, write)


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _why(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:160]


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DidiError(f"no weights file at {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type (and OSError) for truncated or foreign files
        raise DidiError(f"{path} is damaged or not a safetensors file ({_why(e)}); restore it, or delete the run "
                        "and train again") from None


def read_json(path: Path):
    """A JSON file's content; a file that is not valid JSON is one error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DidiError(f"{path} is damaged: not valid JSON ({_why(e)}); restore it, or delete the run and "
                        "start again") from None


# -- checkpoints: the latest and the one before, each written whole --------------------------------------------------

def previous_checkpoint(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(obj, path: Path) -> None:
    """Write `path` atomically, keeping the checkpoint it replaces as `<stem>.prev<suffix>` (also by rename): at
    every instant the directory holds at least one whole checkpoint."""
    path = Path(path)

    def write(tmp):
        torch.save(obj, tmp)
        if path.exists():
            os.replace(path, previous_checkpoint(path))
    atomic_write(path, write)


def load_checkpoint(path: Path, map_location) -> tuple[dict, Path]:
    """(state, file it came from): the latest checkpoint, or, when it is damaged or missing, the one before it."""
    path = Path(path)
    prev = previous_checkpoint(path)
    problem = None
    if path.is_file():
        try:
            return torch.load(path, map_location=map_location, weights_only=False), path
        except Exception as e:  # truncated zip, bad pickle, I/O error: all mean "cannot use this file"
            problem = f"{path} is damaged ({_why(e)})"
    else:
        problem = f"{path} is missing"
    if prev.is_file():
        try:
            state = torch.load(prev, map_location=map_location, weights_only=False)
        except Exception as e:
            raise DidiError(f"{problem}, and so is the one before it, {prev} ({_why(e)}); the run cannot be "
                            "resumed: start a new one") from None
        print(f"didi: {problem}; resuming from the one before it, {prev.name}", flush=True)
        return state, prev
    raise DidiError(f"{problem} and there is no earlier checkpoint ({prev.name}); the run cannot be resumed: "
                    "start a new one")


def read_metrics(path: Path) -> tuple[list[dict], list[int]]:
    """The rows of a metrics.jsonl and the numbers of its damaged lines (not a JSON object), a last line cut short by
    a crash included."""
    rows, damaged = [], []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged.append(number)
    return rows, damaged


def truncate_metrics(path: Path, step: int) -> str | None:
    """On resume: drop metric rows logged after `step` (they are logged again) and a last line cut short by a crash.
    A damaged line anywhere else is not dropped silently: it is moved to `<stem>.damaged.jsonl` beside the file, and
    the returned message says so (None when there was none)."""
    path = Path(path)
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").splitlines()
    keep, damaged, changed = [], [], False
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            changed = True
            if number < len(lines) and line.strip():  # not the last line: not a crash's cut, a damaged row
                damaged.append((number, line))
            continue
        if row.get("step", 0) <= step:
            keep.append(line)
        else:
            changed = True
    if not changed:
        return None
    if damaged:
        aside = path.with_name(f"{path.stem}.damaged.jsonl")
        with aside.open("a") as f:
            f.write("".join(line + "\n" for _, line in damaged))
    atomic_write_text(path, "".join(x + "\n" for x in keep))
    if damaged:
        numbers = ", ".join(str(n) for n, _ in damaged)
        return (f"{path.name}: line{'s' if len(damaged) > 1 else ''} {numbers} damaged (not a JSON row); moved to "
                f"{path.stem}.damaged.jsonl")
    return None
