"""What the code of a latent student (`didi distill --method latent`) carries, and what sampling from the prior
loses: the k-step sampler's output judged with the noise input set four ways.

- prior: xi ~ N(0, I), as `didi sample` and `didi eval` draw it;
- posterior: xi = the encoder's mean for held-out texts (the codes training decoded from), an upper bound on
  what the latent can give the parallel steps;
- zero: xi = 0, the prior's mean;
- fitted: xi ~ N(m, C), a full-covariance Gaussian fitted to the aggregate posterior (draws xi ~ q(xi | x0) for
  every held-out text), the cheapest learned prior;
- aggregate: xi ~ q(xi | x0) for a training text x0 drawn at random, the aggregate posterior itself: the limit any
  learned prior approaches (`--train-texts` of them);
- mog-K (`--mog K`): xi from a K-component diagonal Gaussian mixture fitted by EM to 4 draws of q(xi | x0) per
  training text, a learned prior that can have holes where the aggregate posterior has them.

Column in_train: the share of a row's texts that are exactly a training text (copies, not new texts).
Column source_similarity (aggregate row): the mean word-sequence similarity (difflib ratio) of a text to the training
text whose code it decoded; the settings give the same for random pairs of training texts, the level of no copying.

If posterior rows are far more valid than prior rows, the prior has holes the decoder never trained on; if prior
rows are as valid as posterior rows but less diverse than the data, the code collapsed.

Usage:
  python bench/latent_probe.py runs/x/latent --judge grammar:stories --steps 4,8 --num 512 [--grid-power 3]
      [--name latent_probe_X]
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import torch

from didi import fileio, runs
from didi.api import Pipeline
from didi.data import prepare_data
from didi.distill import DistillConfig
from didi.errors import DidiError
from didi.evaluation import load_judge
from didi.prior import NoisePrior, encode, fit_mixture, load_encoder, posterior_draws
from didi.sampling import SplitDenoiser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py
from common import RESULTS, write_results  # noqa: E402

COLUMNS = ["xi", "steps", "valid_sentences", "valid_texts", "choice_entropy_ratio", "nll_per_word", "in_train",
           "source_similarity"]


def similarity(a: list[str], b: list[str]) -> float:
    """Mean word-sequence similarity of paired texts (difflib's ratio: 1 = the same words in the same order)."""
    return sum(difflib.SequenceMatcher(None, x.split(), y.split()).ratio() for x, y in zip(a, b)) / len(a)


class FixedNoise(Pipeline):
    """A pipeline whose noise input is given, row by row, instead of drawn."""

    def __init__(self, run, noise: torch.Tensor):
        super().__init__(run)
        self.noise = noise

    def denoiser(self, num: int = 0, generator=None, clamp=None, prompt_code="exemplar"):
        return SplitDenoiser(self.model, [], self.noise[:num])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--judge", default="grammar:stories")
    ap.add_argument("--steps", default="4,8")
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid-power", type=float, help="the sampler's time grid (default: the run's own)")
    ap.add_argument("--mog", type=int, default=0, help="also draw xi from a K-component mixture fitted by EM")
    ap.add_argument("--train-texts", type=int, default=8192, help="training texts for the aggregate and mixture rows")
    ap.add_argument("--name")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    run_dir = Path(args.run)
    run = runs.load_run(run_dir, "cpu")
    dim = run.config.model.noise_dim
    if not dim or not (run_dir / "encoder.safetensors").is_file():
        raise SystemExit(f"{run_dir} is not a latent student (no noise input or no encoder.safetensors)")
    saved = fileio.read_json(run_dir / runs.CONFIG)["distill"]
    encoder = load_encoder(run_dir, run.model)
    pipe = Pipeline(run)
    train, valid = prepare_data(run.config.data, pipe.tokenizer, run.config.model.length, show_progress=False)
    if len(valid) == 0:
        raise DidiError(f"{run_dir}'s data has no held-out blocks to encode")
    x_all = valid.get(torch.arange(len(valid)))
    mu_all, logvar_all = encode(encoder, x_all)
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
    mu_tr, logvar_tr = (v.double() for v in encode(encoder, train.get(torch.arange(min(args.train_texts, len(train))))))
    pick = torch.randint(len(mu_tr), (n,), generator=gen)
    codes["aggregate"] = posterior_draws(mu_tr[pick], logvar_tr[pick], gen).float()
    sources = pipe.decode(train.get(pick))  # the training texts whose codes the aggregate row decodes
    others = pipe.decode(train.get(torch.randint(len(mu_tr), (n,), generator=gen)))
    extra = {"random_pair_similarity": similarity(sources, others)}
    if args.mog:
        fit = posterior_draws(mu_tr.repeat(4, 1), logvar_tr.repeat(4, 1), gen)
        means, var, logw, loglik = fit_mixture(fit, args.mog, 60, gen)
        codes[f"mog-{args.mog}"] = NoisePrior(means, var, logw, {}).sample(n, gen)
        extra |= {"mog_components": args.mog, "mog_fit_loglik": loglik}
    judge = load_judge(args.judge)
    seen = set(pipe.decode(train.get(torch.arange(len(train)))))  # every training text: what a sample may copy

    def in_train(texts: list[str]) -> float:
        return sum(t in seen for t in texts) / len(texts)

    held = pipe.decode(x)
    rows = [{"xi": "data (held-out)", "steps": 0, **judge.score(held), "in_train": in_train(held)}]
    for name, xi in codes.items():
        p = FixedNoise(run, xi)
        for s in [int(v) for v in args.steps.split(",")]:
            with torch.inference_mode():
                out = p.sample(num=n, steps=s, seed=args.seed, batch_size=n, grid_power=args.grid_power)
            rows.append({"xi": name, "steps": s, **judge.score(out.text), "in_train": in_train(out.text)})
            if name == "aggregate":
                rows[-1]["source_similarity"] = similarity(out.text, sources)
            print({k: rows[-1].get(k) for k in COLUMNS}, flush=True)
    meta = {"run": str(run_dir), "latent_beta": DistillConfig.from_dict(saved).latent.beta, "num": n, "seed": args.seed,
            "grid_power": args.grid_power or run.config.diffusion.grid_power,
            "judge": args.judge, "posterior_std_mean": float((0.5 * logvar).exp().mean()),
            "posterior_mean_rms": float(mu.square().mean().sqrt()), "fit_texts": len(mu_all),
            "train_texts": len(mu_tr), **extra,
            "aggregate_mean_norm": float(m.norm()), "aggregate_cov_eigenvalues": torch.linalg.eigvalsh(cov).tolist()}
    notes = (f"Latent probe of {run_dir.name}: the sampler with its code from the prior, the encoder's mean for "
             f"held-out texts (posterior), 0, a Gaussian fitted to the aggregate posterior, a draw of q(xi | x0) for a "
             f"training text (aggregate) or a fitted mixture (mog-K); the first row judges "
             f"those held-out texts themselves.")
    write_results(args.name or f"latent_probe_{run_dir.name}", rows, meta, COLUMNS, notes, out_dir=Path(args.out))


if __name__ == "__main__":
    main()
