"""Shared benchmark plumbing: machine/commit facts, writing JSON + Markdown results, and cached stages (finished
runs a benchmark builds once and reuses)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from didi.evaluation.evaluate import git_commit as commit
from didi.evaluation.evaluate import machine
from didi.fileio import read_metrics

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


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def stage(work: Path, name: str, given: str | None, build) -> Path:
    """A finished run directory for `name`: the user's, a finished one in work/, or one built (or resumed) now."""
    if given:
        return Path(given)
    out, done = work / name, work / f"{name}.done"
    if done.is_file():
        return out
    resume = (out / "checkpoint.pt").is_file()
    if out.exists() and not resume:  # killed before its first checkpoint: keep it aside, start again
        aside = out.with_name(f"{name}.partial-{int(time.time())}")
        out.rename(aside)
        print(f"bench: stage {name}: {out} had no checkpoint; moved to {aside}", flush=True)
    print(f"bench: stage {name}: {'resuming' if resume else 'starting'} in {out}", flush=True)
    start = time.perf_counter()
    build(out, resume)
    done.write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")
    return out


def stage_facts(paths: dict[str, Path]) -> dict:
    facts = {}
    for name, path in paths.items():
        metrics, damaged = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else ([], [])
        if damaged:
            print(f"bench: {path / 'metrics.jsonl'}: damaged lines {damaged} left out", flush=True)
        train = [m for m in metrics if "loss" in m]
        val = [m for m in metrics if any(k.startswith("val_") for k in m)]
        facts[name] = {"path": str(path), "steps": train[-1]["step"] if train else None,
                       "minutes": round(train[-1]["elapsed_s"] / 60, 1) if train and "elapsed_s" in train[-1] else None,
                       "last_validation": val[-1] if val else None}
    return facts


def stage_markdown(stages: dict) -> str:
    lines = ["## Stages", "", "| stage | steps | minutes | last validation |", "|---|---|---|---|"]
    for name, f in stages.items():
        v = f["last_validation"] or {}
        shown = ", ".join(f"{k} {v[k]:.4g}" for k in v if k.startswith("val_") and isinstance(v[k], float))
        lines.append(f"| {name} | {f['steps']} | {f['minutes']} | {shown} |")
    return "\n".join(lines) + "\n"


def save_figure(fig, path: Path) -> None:
    """Lay out and write a matplotlib figure as a PNG, whole then renamed, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
