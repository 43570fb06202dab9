"""What only a GPU shows, in one prepared call of a few minutes: at the `small` preset (the official 169 M OpenWebText
shape, length 1,024, GPT-2 vocabulary; bf16 autocast, SDPA attention, torch.compile) the MDLM training step's
tokens/s and model FLOPs utilization, one DiDi-Instruct iteration (paper preset, batch and group cut to fit) and the
projected hours of 10,000, and sampling latency of the DiT at 8 and 16 steps against the AR model of the same shape
with a KV cache, at batch 1 and 64. Untrained weights: every number here is time, and a sampler's time does not
depend on its weights (each runs its full number of steps; the step cache is off).

On a CPU it runs the same code at the `test` shape (the suite runs it so), which says nothing about speed.

Usage:
  python bench/gpu.py                       # CUDA when there is one; results to bench/results/gpu_<device>.{json,md}
  python bench/gpu.py --shape test --out /tmp/gpu --no-compile      # the suite's CPU run
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import time
from pathlib import Path

import torch
from common import RESULTS, write_results

from didi.config import preset
from didi.distill import distill_preset
from didi.methods.didi_instruct import DiDiInstruct
from didi.methods.mdlm import MDLM
from didi.nn.ar import CausalTransformer, generate
from didi.nn.discriminator import Discriminator
from didi.nn.dit import DIT
from didi.sampling import SplitDenoiser, ancestral_sample
from didi.trainer import Context, Dist, PartSpec, build_parts

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense, per GPU


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def train_flops_per_token(model: torch.nn.Module, cfg) -> float:
    """6 x non-embedding parameters + 12 x blocks x hidden x length (attention), per token (PaLM's count)."""
    params = sum(p.numel() for n, p in model.named_parameters() if "vocab_embed" not in n)
    m = cfg.model
    return 6 * params + 12 * m.n_blocks * m.hidden_dim * m.length


def context(specs: dict, device: str, batch: int, compile_model: bool) -> Context:
    d = Dist()
    return Context(build_parts(specs, device, d, compile_model), device, d, True, batch)


def mdlm_row(cfg, device: str, batch: int, reps: int, compile_model: bool) -> dict:
    torch.manual_seed(0)
    model = DIT(cfg.model)
    method = MDLM(cfg, cfg.model.vocab_size - 1)
    ctx = context({"model": PartSpec(model, lr=1e-4, max_steps=10_000)}, device, batch, compile_model)
    x = torch.randint(0, cfg.model.vocab_size - 1, (batch, cfg.model.length), device=device)
    gen = torch.Generator().manual_seed(0)
    secs = timed(lambda: method.step(x, gen, ctx), device, reps, warmup=3)
    sec = statistics.median(secs)
    tps = batch * cfg.model.length / sec
    peak = peak_flops(device)
    flops = train_flops_per_token(model, cfg)
    return {"what": "MDLM training step", "batch": batch, "seconds": sec, "tokens_per_s": tps,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "mfu": tps * flops / peak if peak else None}


def didi_row(cfg, device: str, batch: int, group: int, reps: int, compile_model: bool) -> dict:
    dcfg = distill_preset("paper", [f"batch_size={batch}", f"didi.group={group}"])
    torch.manual_seed(0)
    teacher = DIT(cfg.model).to(device).eval().requires_grad_(False)
    student = DIT(cfg.model)
    student.load_state_dict(teacher.state_dict())
    disc = Discriminator.from_teacher(teacher, dcfg.didi.disc_trainable_blocks, dcfg.didi.disc_time_conditioning)
    method = DiDiInstruct(cfg, dcfg, cfg.model.vocab_size - 1, teacher)
    specs = {"student": PartSpec(student, lr=dcfg.student_lr, max_steps=dcfg.max_steps),
             "discriminator": PartSpec(disc, lr=dcfg.didi.disc_lr, max_steps=dcfg.max_steps)}
    ctx = context(specs, device, batch, compile_model)
    x = torch.randint(0, cfg.model.vocab_size - 1, (batch, cfg.model.length), device=device)
    gen = torch.Generator().manual_seed(0)
    sec = statistics.median(timed(lambda: method.step(x, gen, ctx), device, reps, warmup=2))
    paper = distill_preset("paper")
    scale = (paper.batch_size * paper.didi.group) / (batch * group)  # the paper's rollouts per iteration, if time
    # scales
    return {"what": f"DiDi-Instruct iteration ({batch} x {group} rollouts)", "batch": batch * group, "seconds": sec,
            "hours_per_10k": sec * 10_000 / 3600,
            "hours_per_10k_paper_batch": sec * scale * 10_000 / 3600}


def sampling_rows(cfg, device: str, reps: int, steps_list: list[int], batches: list[int]) -> list[dict]:
    torch.manual_seed(0)
    V, L = cfg.model.vocab_size, cfg.model.length
    dit = DIT(cfg.model).to(device).eval()
    for p in dit.parameters():  # zero-initialized output layers would give uniform logits; any weights do for time
        torch.nn.init.normal_(p, std=0.02)
    ar_cfg = dataclasses.replace(cfg.model, arch="ar")
    ar = CausalTransformer(ar_cfg).to(device).eval()
    denoiser = SplitDenoiser(dit)
    rows = []
    for batch in batches:
        for steps in steps_list:
            def run(batch=batch, steps=steps):
                ancestral_sample(denoiser, batch, L, steps, V - 1, cache=False, device=device,
                                 generator=torch.Generator(device).manual_seed(0))
            sec = statistics.median(timed(run, device, reps, warmup=1))
            rows.append({"what": f"DiT, {steps} steps", "batch": batch, "seconds": sec, "s_per_seq": sec / batch})

        def run_ar(batch=batch):
            generate(ar, batch, L, bos_id=0, mask_id=V - 1, generator=torch.Generator(device).manual_seed(0))
        sec = statistics.median(timed(run_ar, device, reps, warmup=1))
        rows.append({"what": f"AR + KV cache, {L} tokens", "batch": batch, "seconds": sec, "s_per_seq": sec / batch})
        ar_sec = sec
        for r in rows[-len(steps_list) - 1:]:
            r["speedup_vs_ar"] = ar_sec / r["seconds"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default=None, help="model preset (default: small on CUDA, test on a CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 32 on CUDA, 4 on a CPU)")
    ap.add_argument("--didi-batch", type=int, default=None, help="DiDi real rows per iteration (default 8 / 2)")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--reps", type=int, default=None, help="timed repeats (default 10 / 2)")
    ap.add_argument("--sample-steps", default="8,16")
    ap.add_argument("--sample-batches", default="1,64")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    shape = args.shape or ("small" if cuda else "test")
    cfg = preset(shape, ["model.dropout=0.0"])
    batch = args.batch or (32 if cuda else 4)
    reps = args.reps or (10 if cuda else 2)
    compile_model = not args.no_compile
    started = time.perf_counter()
    rows = [mdlm_row(cfg, args.device, batch, reps, compile_model)]
    print(rows[-1], flush=True)
    rows.append(didi_row(cfg, args.device, args.didi_batch or (8 if cuda else 2), args.group, max(reps // 2, 2),
                         compile_model))
    print(rows[-1], flush=True)
    rows += sampling_rows(cfg, args.device, max(reps // 2, 2), [int(s) for s in args.sample_steps.split(",")],
                          [int(b) for b in args.sample_batches.split(",")])
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    tag = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    path = write_results(
        f"gpu_{tag}", rows,
        {"device": device_name, "shape": shape, "length": cfg.model.length, "vocab": cfg.model.vocab_size,
         "bf16": True, "compile": compile_model, "train_batch": batch, "reps": reps,
         "seconds_total": time.perf_counter() - started},
        ["what", "batch", "seconds", "tokens_per_s", "mfu", "hours_per_10k", "hours_per_10k_paper_batch", "s_per_seq",
         "speedup_vs_ar", "params_M"],
        notes=f"Device: {device_name}. Median of the timed repeats after warm-up (compiling happens in the warm-up). "
              "MFU: tokens/s x (6 x non-embedding parameters + 12 x blocks x hidden x length) / the device's dense "
              "bf16 peak. hours_per_10k_paper_batch scales the iteration linearly to the paper's batch x group.",
        out_dir=Path(args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
