"""Where a latent student's code helps: cross-entropy per masked token at fixed masking times t, for the teacher
(no code), the latent student given the encoder's code of each held-out text (the posterior mean: what the code can
tell the decoder) and the student given a draw of N(0, I) (a code unrelated to the text).

Near t = 0 most tokens are visible and the context decides the rest; near t = 1 only the code can say what goes where,
which is what the tokens a few-step sampler reveals together must agree on. The gap teacher - posterior at each t is
what the decoder has learned to read from its code there.

Usage:
  python bench/code_use.py runs/x/latent --teacher runs/teacher [--num 512] [--name code_use_X]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from didi import runs
from didi.data import prepare_data
from didi.diffusion import Kept, LogLinearSchedule, mask_tokens, masked_log_probs
from didi.errors import DidiError
from didi.prior import encode, load_encoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py
from common import RESULTS, write_results  # noqa: E402

TIMES = (0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.97, 1.0)
COLUMNS = ["t", "teacher", "posterior", "prior_draw", "read_from_code"]


@torch.no_grad()
def masked_ce(model, x: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, mask_id: int, xi=None) -> float:
    """Mean -log p(x0) over the masked positions of z (nats per masked token)."""
    logits = model(z, sigma) if xi is None else model(z, sigma, xi)
    m = z == mask_id
    return float(-masked_log_probs(logits[m], mask_id).gather(-1, x[m][:, None]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    run_dir = Path(args.run)
    run, teacher = runs.load_run(run_dir, "cpu"), runs.load_run(args.teacher, "cpu")
    if not run.config.model.noise_dim or not (run_dir / "encoder.safetensors").is_file():
        raise SystemExit(f"{run_dir} is not a latent student (no noise input or no encoder.safetensors)")
    encoder = load_encoder(run_dir, run.model)
    tok = run.tokenizer
    _, valid = prepare_data(run.config.data, tok, run.config.model.length, show_progress=False)
    if len(valid) == 0:
        raise DidiError(f"{run_dir}'s data has no held-out blocks to encode")
    x = valid.get(torch.arange(min(args.num, len(valid))))
    mu, _ = encode(encoder, x)
    keep = Kept.for_run(run.config.data, tok)(x)
    schedule = LogLinearSchedule(run.config.diffusion.eps)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for t0 in TIMES:
        t = torch.full((x.shape[0],), t0)
        noise = torch.rand(x.shape, generator=gen).masked_fill(keep, 0.0)  # kept positions stay
        z = mask_tokens(x, schedule.alpha(t), tok.mask_id, noise)
        sigma = schedule.sigma(t)
        row = {"t": t0, "teacher": masked_ce(teacher.model, x, z, sigma, tok.mask_id),
               "posterior": masked_ce(run.model, x, z, sigma, tok.mask_id, mu),
               "prior_draw": masked_ce(run.model, x, z, sigma, tok.mask_id,
                                       torch.randn(mu.shape, generator=gen))}
        row["read_from_code"] = row["teacher"] - row["posterior"]
        rows.append(row)
        print(row, flush=True)
    notes = (f"Cross-entropy (nats per masked token) of {run_dir.name} on {x.shape[0]} held-out texts masked at "
             f"fixed t: the teacher without a code, the student with the encoder's code of the text (posterior) and "
             f"with an N(0, I) draw; read_from_code = teacher - posterior.")
    write_results(args.name or f"code_use_{run_dir.name}", rows,
                  {"run": str(run_dir), "teacher": args.teacher, "num": x.shape[0], "seed": args.seed},
                  COLUMNS, notes, out_dir=Path(args.out))


if __name__ == "__main__":
    main()
