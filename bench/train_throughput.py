"""Training and forward throughput (tokens/s) of the DiT presets on this machine.

The reference figures: the official DiT at 4 blocks / 256 hidden / 4 heads, 8,193-token
vocabulary, length 128, batch 32 trains at about 2,200 tokens/s and runs forward at about
10,000 tokens/s on these 2-core machines; at 6 / 384 / 6, about 1,050 and 4,000.
Usage: python bench/train_throughput.py [--steps 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import write_results

from didi.config import RunConfig
from didi.diffusion import LogLinearSchedule
from didi.methods.mdlm import MDLM
from didi.nn.dit import DIT

SHAPES = {"tiny (4/256/4)": (4, 256, 4), "6/384/6": (6, 384, 6)}
REFERENCE = {"tiny (4/256/4)": (2200.0, 10000.0), "6/384/6": (1050.0, 4000.0)}  # published, official DiT


def measure(n_blocks: int, hidden: int, heads: int, steps: int, warmup: int, batch: int = 32, length: int = 128,
            vocab: int = 8193) -> dict:
    cfg = RunConfig()
    cfg.model.n_blocks, cfg.model.hidden_dim, cfg.model.n_heads = n_blocks, hidden, heads
    cfg.model.length, cfg.model.vocab_size = length, vocab
    torch.manual_seed(0)
    model = DIT(cfg.model)
    method = MDLM(cfg, vocab - 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab - 1, (batch, length))
    gen = torch.Generator().manual_seed(0)

    def train_step():
        loss, _ = method.loss(model, x, gen, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):  # first calls pay allocator and kernel-selection costs
        train_step()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_tps = steps * batch * length / (time.perf_counter() - start)

    model.eval()
    sigma = LogLinearSchedule().sigma(torch.full((batch,), 0.5))
    with torch.no_grad():
        for _ in range(warmup):
            model(x, sigma)
        start = time.perf_counter()
        for _ in range(steps):
            model(x, sigma)
    fwd_tps = steps * batch * length / (time.perf_counter() - start)
    return {"params_M": sum(p.numel() for p in model.parameters()) / 1e6, "train_tokens_per_s": train_tps,
            "forward_tokens_per_s": fwd_tps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for name, (nb, h, nh) in SHAPES.items():
        r = measure(nb, h, nh, args.steps, args.warmup)
        ref_train, ref_fwd = REFERENCE[name]
        rows.append({"shape": name, **r, "train_vs_official_ref": r["train_tokens_per_s"] / ref_train,
                     "forward_vs_official_ref": r["forward_tokens_per_s"] / ref_fwd})
        print(rows[-1])
    path = write_results(
        "train_throughput", rows,
        {"batch": 32, "length": 128, "vocab": 8193, "steps": args.steps, "warmup": args.warmup, "dtype": "float32"},
        ["shape", "params_M", "train_tokens_per_s", "forward_tokens_per_s", "train_vs_official_ref",
         "forward_vs_official_ref"],
        notes="Ratios are against the published figures for the official DiT on the same kind of machine "
              "(not re-measured in this run: its code is not available here).")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
