"""What the code of a latent student (`didi distill --method latent`) carries, and what sampling from the prior
loses: the k-step sampler's output judged with the noise input set four ways.

- prior: xi ~ N(0, I), as `didi sample` and `didi eval` draw it;
- posterior: xi = the encoder's mean for held-out texts (the codes training decoded from), an upper bound on
  what the latent can give the parallel steps;
- zero: xi = 0, the prior's mean;
- fitted: xi ~ N(m, C), a full-covariance Gaussian fitted to the aggregate posterior (draws xi ~ q(xi | x0) for
  every held-out text), the cheapest learned prior.

If posterior rows are far more valid than prior rows, the prior has holes the decoder never trained on; if prior
rows are as valid as posterior rows but less diverse than the data, the code collapsed.

Usage:
  python bench/latent_probe.py runs/x/latent --judge grammar:stories --steps 4,8 --num 512 [--grid-power 3]
      [--name latent_probe_X]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import RESULTS, write_results

from didi import fileio, runs
from didi.api import Pipeline
from didi.evaluation import load_judge
from didi.evaluation.evaluate import heldout_tokens
from didi.nn.encoder import SequenceEncoder
from didi.sampling import SplitDenoiser

COLUMNS = ["xi", "steps", "valid_sentences", "valid_texts", "choice_entropy_ratio", "nll_per_word"]


class FixedNoise(Pipeline):
    """A pipeline whose noise input is given, row by row, instead of drawn."""

    def __init__(self, run, noise: torch.Tensor):
        super().__init__(run)
        self.noise = noise

    def denoiser(self, num: int = 0, generator=None):
        return SplitDenoiser(self.model, [], self.noise[:num])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--judge", default="grammar:stories")
    ap.add_argument("--steps", default="4,8")
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid-power", type=float, help="the sampler's time grid (default: the run's own)")
    ap.add_argument("--name")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    run_dir = Path(args.run)
    run = runs.load_run(run_dir, "cpu")
    dim = run.config.model.noise_dim
    if not dim or not (run_dir / "encoder.safetensors").is_file():
        raise SystemExit(f"{run_dir} is not a latent student (no noise input or no encoder.safetensors)")
    saved = fileio.read_json(run_dir / runs.CONFIG)["distill"]
    enc_weights = fileio.load_weights(run_dir / "encoder.safetensors")
    encoder = SequenceEncoder(run.model, dim, saved["latent_encoder_blocks"])
    encoder.load_state_dict(enc_weights)
    pipe = Pipeline(run)
    x_all = heldout_tokens(pipe, 10**9)
    with torch.inference_mode():
        mu_all, logvar_all = encoder.eval()(x_all)
    x, mu, logvar = x_all[:args.num], mu_all[:args.num], logvar_all[:args.num]
    n = mu.shape[0]
    gen = torch.Generator().manual_seed(args.seed)
    # aggregate posterior: 8 draws per held-out text
    draws = (mu_all.repeat(8, 1) + (0.5 * logvar_all).exp().repeat(8, 1) * torch.randn(8 * len(mu_all), dim,
                                                                                        generator=gen)).double()
    m, cov = draws.mean(0), torch.cov(draws.T)
    fitted = (m + torch.randn(n, dim, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T).float()
    codes = {"prior": torch.randn(n, dim, generator=torch.Generator().manual_seed(args.seed)), "posterior": mu,
             "zero": torch.zeros(n, dim), "fitted": fitted}
    judge = load_judge(args.judge)
    rows = [{"xi": "data (held-out)", "steps": 0, **judge.score(pipe.decode(x))}]
    for name, xi in codes.items():
        p = FixedNoise(run, xi)
        for s in [int(v) for v in args.steps.split(",")]:
            with torch.inference_mode():
                out = p.sample(num=n, steps=s, seed=args.seed, batch_size=n, grid_power=args.grid_power)
            rows.append({"xi": name, "steps": s, **judge.score(out.text)})
            print({k: rows[-1].get(k) for k in COLUMNS}, flush=True)
    meta = {"run": str(run_dir), "latent_beta": saved.get("latent_beta"), "num": n, "seed": args.seed,
            "grid_power": args.grid_power or run.config.diffusion.grid_power,
            "judge": args.judge, "posterior_std_mean": float((0.5 * logvar).exp().mean()),
            "posterior_mean_rms": float(mu.square().mean().sqrt()), "fit_texts": len(mu_all),
            "aggregate_mean_norm": float(m.norm()), "aggregate_cov_eigenvalues": torch.linalg.eigvalsh(cov).tolist()}
    notes = (f"Latent probe of {run_dir.name}: the sampler with its code from the prior, the encoder's mean for "
             f"held-out texts (posterior), 0, or a Gaussian fitted to the aggregate posterior; the first row judges "
             f"those held-out texts themselves.")
    write_results(args.name or f"latent_probe_{run_dir.name}", rows, meta, COLUMNS, notes, out_dir=Path(args.out))


if __name__ == "__main__":
    main()
