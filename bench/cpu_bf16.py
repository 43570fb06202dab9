"""bfloat16 autocast on a CPU (`train.cpu_bf16`): speed of the DiT and of a DiDi-Instruct iteration, and how far
bf16 moves the teacher's log-probabilities.

Usage: python bench/cpu_bf16.py --teacher runs/lang-teacher [--iterations 30] [--repeats 5]

Rows, each measured fp32 then bf16 in this one process:
- `forward` / `forward+backward`: the teacher's DiT on a batch of 97 rows (what one DiDi iteration of the `lang`
  preset feeds the student: 1 + 3 x 32 rollout states), seconds per call, median of `--repeats`;
- `didi iteration`: seconds per iteration of `didi distill --preset lang` (grid power 3) on the teacher, the mean
  over a whole run of `--iterations` + 5 (set-up included), after a 5-iteration warm-up run;
- `log-prob error`: mean and max abs(log p_bf16 - log p_fp32) at masked positions of held-out rows noised to a
  uniform time, and the mean KL(p_fp32 ‖ p_bf16) per position.
Needs the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import write_results

from didi import runs
from didi.data import prepare_data
from didi.diffusion import LogLinearSchedule, mask_tokens, masked_log_probs
from didi.distill import distill, distill_preset

COLUMNS = ["what", "fp32", "bf16", "fp32_over_bf16", "unit"]


def timed(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_rows(model, mask_id: int, repeats: int) -> list[dict]:
    L = model.config.length
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, mask_id, (97, L), generator=g)
    z[torch.rand(z.shape, generator=g) < 0.5] = mask_id
    sigma = torch.zeros(97)

    def forward(bf16):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(z, sigma)

    def forward_backward(bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(z, sigma)
        masked_log_probs(out[z == mask_id], mask_id).max(-1).values.mean().backward()

    rows = []
    for what, fn in (("forward, 97 rows", forward), ("forward+backward, 97 rows", forward_backward)):
        fp32, bf16 = (timed(lambda f=fn, b=b: f(b), repeats) for b in (False, True))
        rows.append({"what": what, "fp32": fp32, "bf16": bf16, "fp32_over_bf16": fp32 / bf16, "unit": "s"})
    model.zero_grad(set_to_none=True)
    return rows


def iteration_seconds(teacher: Path, iterations: int, bf16: bool) -> float:
    dcfg = distill_preset("lang", [f"max_steps={iterations + 5}"])
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["diffusion.grid_power=3", "train.eval_every=0", "train.save_every=0", "train.log_every=1",
                     f"train.cpu_bf16={'true' if bf16 else 'false'}"]
        distill(teacher, Path(tmp) / "warm", dcfg, overrides=overrides, until_step=5, progress=False)  # warm-up
        start = time.perf_counter()
        distill(teacher, Path(tmp) / "run", dcfg, overrides=overrides, progress=False)
        spent = time.perf_counter() - start
    return spent / (iterations + 5)


def logprob_error(model, cfg, tok) -> list[dict]:
    _, valid = prepare_data(cfg.data, tok, cfg.model.length, show_progress=False)
    x = valid.get(list(range(min(256, len(valid)))))
    g = torch.Generator().manual_seed(0)
    sched = LogLinearSchedule(cfg.diffusion.eps)
    t = torch.rand(x.shape[0], generator=g)
    z = mask_tokens(x, sched.alpha(t), tok.mask_id, torch.rand(x.shape, generator=g))
    sigma = torch.zeros(x.shape[0])
    with torch.no_grad():
        lp32 = masked_log_probs(model(z, sigma)[z == tok.mask_id], tok.mask_id)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp16 = masked_log_probs(model(z, sigma)[z == tok.mask_id], tok.mask_id)
    p32 = lp32.exp()
    finite = p32 > 0
    diff = (lp16 - lp32).abs()[finite & (p32 > 1e-3)]  # tokens with probability above 1e-3
    kl = (p32 * (lp32 - lp16)).nan_to_num(0.0).sum(-1)
    where = "tokens with p > 1e-3"
    return [{"what": f"mean abs(log p bf16 - log p fp32), {where}", "bf16": float(diff.mean()), "unit": "nats"},
            {"what": f"max abs(log p bf16 - log p fp32), {where}", "bf16": float(diff.max()), "unit": "nats"},
            {"what": "KL(p_fp32 ‖ p_bf16) per masked position", "bf16": float(kl.mean()), "unit": "nats"}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--name", default="cpu_bf16")
    args = ap.parse_args()
    run = runs.load_run(args.teacher, "cpu")
    model = run.model.eval()
    rows = network_rows(model, run.tokenizer.mask_id, args.repeats)
    fp32 = iteration_seconds(Path(args.teacher), args.iterations, False)
    bf16 = iteration_seconds(Path(args.teacher), args.iterations, True)
    rows.append({"what": "didi iteration (preset lang, grid power 3)", "fp32": fp32, "bf16": bf16,
                 "fp32_over_bf16": fp32 / bf16, "unit": "s"})
    rows += logprob_error(model, run.config, run.tokenizer)
    note = (f"The teacher `{args.teacher}` ({run.config.model.n_blocks} blocks, hidden {run.config.model.hidden_dim}, "
            f"vocabulary {run.config.model.vocab_size}, length {run.config.model.length}); fp32 and bf16 measured "
            "one after the other in this process, machine otherwise idle.")
    path = write_results(args.name, rows, vars(args), COLUMNS, note)
    print(path.read_text())


if __name__ == "__main__":
    main()
