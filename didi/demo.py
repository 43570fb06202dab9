"""`didi demo`: offline, on the embedded corpus: train a tiny teacher, then sample at several step counts."""

from __future__ import annotations

import json
from pathlib import Path

from . import runs
from .api import load, train
from .config import preset
from .demo_corpus import demo_documents
from .errors import DidiError

DEMO_STEPS = (4, 8, 16, 64, 256)


def run_demo(out: Path, minutes: float = 4.0, device: str = "cpu", num: int = 4) -> None:
    out = Path(out)
    if (out / runs.WEIGHTS).is_file():
        print(f"didi demo: found a trained teacher in {out}; sampling from it (delete the directory to retrain)")
    else:
        if out.exists() and any(out.iterdir()):
            raise DidiError(f"{out} exists and is not empty; choose another --out or delete it")
        corpus = out / "corpus.jsonl"
        runs.atomic_write_text(corpus, "".join(json.dumps({"text": t}) + "\n" for t in demo_documents()))
        cfg = preset("tiny", [f"data.source={corpus}", "data.tokenizer=bpe:1024", f"train.max_minutes={minutes}",
                              "train.max_steps=600", "train.batch_size=16", "train.warmup_steps=50",
                              "train.eval_every=200", "train.save_every=200", f"train.device={device}",
                              f"data.cache_dir={out / 'cache'}"])
        print(f"didi demo: training a tiny MDLM teacher for up to {minutes:g} minutes on {corpus} "
              f"(an embedded corpus of simple stories)")
        train(cfg, out)
    pipe = load(out, device=device)
    print(f"\n{'steps':>6} {'NFE/seq':>8} {'s/sample':>9}  first sample")
    for steps in DEMO_STEPS:
        s = pipe.sample(num=num, steps=steps, seed=0)
        text = s.text[0].replace("\n", " ")
        print(f"{steps:>6} {s.nfe_mean:>8.1f} {s.seconds / num:>9.4f}  {text[:110]}")
    print("\nA full sample at 256 steps:\n" + pipe.sample(num=1, steps=256, seed=1).text[0])
