"""Shared benchmark plumbing: machine/commit facts and writing JSON + Markdown results."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from didi.evaluation.evaluate import git_commit as commit
from didi.evaluation.evaluate import machine

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, rows: list[dict], settings: dict, columns: list[str], notes: str = "",
                  out_dir: Path = RESULTS) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": commit(), "machine": machine(), "settings": settings}
    (out_dir / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# {name}", "", f"commit `{meta['commit']}`, {meta['date']}, {meta['machine']['cpu']} "
             f"({meta['machine']['cores']} cores, torch {meta['machine']['torch']}, "
             f"{meta['machine']['torch_threads']} threads)", ""]
    if notes:
        lines += [notes, ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)
