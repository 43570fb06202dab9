"""A learned prior for a student's noise input xi (a latent student, `didi distill --method latent`).

A latent student is trained on codes from its encoder, xi ~ q(xi | x0), while sampling draws xi ~ N(0, I). With a
small KL weight (`distill.latent.beta`) the codes of real texts fill N(0, I) unevenly, and draws that land where no
training code was decode worse (bench/latent_probe.py measures how much). `NoisePrior` is a diagonal Gaussian
mixture fitted to those codes, saved as `noise_prior.safetensors` beside the model; `Pipeline` and DiDi rollouts
(`distill.noise_prior`) draw xi from it instead of N(0, I).

- components K > 0: EM on `draws` codes per training text (K diagonal components);
- components 0: the aggregate posterior itself, one component N(mu(x0), var(x0)) per training text (an exemplar
  prior: each draw decodes near the plan of one training text).

`didi prior RUN` fits and writes it. Nothing here reads the language: only the encoder and the training texts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import fileio
from .errors import DidiError

FILE = "noise_prior.safetensors"


@dataclass
class NoisePrior:
    means: torch.Tensor  # [K, D]
    variances: torch.Tensor  # [K, D]
    log_weights: torch.Tensor  # [K]
    info: dict

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws [n, D] (float32) on the generator's device: a component by weight, then its Gaussian."""
        dev = generator.device if generator is not None else torch.device("cpu")
        w = self.log_weights.double().exp().to(dev)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, device=dev, dtype=torch.float64)
        return (self.means.double().to(dev)[k] + self.variances.double().to(dev)[k].sqrt() * eps).float()

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / FILE
        fileio.save_weights({"means": self.means.float().contiguous(), "variances": self.variances.float().contiguous(),
                             "log_weights": self.log_weights.float().contiguous()}, path,
                            metadata={"info": json.dumps(self.info)})
        return path


def _component_log_probs(x, mu, var, logw):
    """[N, K]: log w_k + log N(x | mu_k, diag var_k)."""
    return logw - 0.5 * ((x[:, None] - mu) ** 2 / var + var.log() + math.log(2 * math.pi)).sum(-1)


def fit_mixture(x: torch.Tensor, k: int, iters: int = 60, generator: torch.Generator | None = None,
                floor: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """EM for a k-component diagonal Gaussian mixture on x [N, D] -> (means, variances, log weights, mean
    log-likelihood of x at the end). Starts from k distinct rows of x; variances are floored at `floor`."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise DidiError(f"a mixture of {k} components needs at least {k} points (got {n})")
    x = x.double()
    mu = x[torch.randperm(n, generator=generator)[:k]].clone()
    var = x.var(0, keepdim=True).repeat(k, 1) + floor
    logw = torch.full((k,), -math.log(k), dtype=x.dtype)
    for _ in range(iters):
        r = torch.softmax(_component_log_probs(x, mu, var, logw), 1)
        nk = r.sum(0) + 1e-12
        mu = r.T @ x / nk[:, None]
        var = (r.T @ (x * x) / nk[:, None] - mu**2).clamp_min(0) + floor
        logw = (nk / n).log()
    loglik = float(_component_log_probs(x, mu, var, logw).logsumexp(1).mean())
    return mu, var, logw, loglik


def posterior_draws(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """xi ~ q(xi | x0) = N(mu, exp(logvar)) per row, in mu's dtype."""
    return mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, dtype=mu.dtype)


@torch.inference_mode()
def encode(encoder: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's (mean, log-variance) [N, D] for token rows x [N, L], in batches."""
    parts = [encoder(x[i:i + batch]) for i in range(0, len(x), batch)]
    return torch.cat([m for m, _ in parts]).float(), torch.cat([v for _, v in parts]).float()


def fit_prior(mu: torch.Tensor, logvar: torch.Tensor, components: int, *, draws: int = 4, iters: int = 60,
              seed: int = 0) -> NoisePrior:
    """A NoisePrior from the codes q(xi | x0) = N(mu, exp(logvar)) [N, D] of N training texts: the exemplar
    mixture (components 0) or a K-component EM fit to `draws` codes per text."""
    n = mu.shape[0]
    if components < 0:
        raise DidiError(f"prior components must be >= 0, not {components}")
    info = {"components": components, "texts": n}
    if components == 0:
        return NoisePrior(mu.double(), logvar.double().exp(), torch.full((n,), -math.log(n), dtype=torch.float64),
                          info | {"kind": "aggregate posterior (one component per training text)"})
    gen = torch.Generator().manual_seed(seed)
    x = posterior_draws(mu.double().repeat(draws, 1), logvar.double().repeat(draws, 1), gen)
    means, var, logw, loglik = fit_mixture(x, components, iters, gen)
    return NoisePrior(means, var, logw, info | {"kind": f"diagonal Gaussian mixture (EM, {iters} iterations)",
                                                "draws_per_text": draws, "fit_loglik": loglik, "seed": seed})


def write_prior(run_dir: str | Path, components: int, *, encoder_run: str | Path | None = None, texts: int = 8192,
                seed: int = 0) -> NoisePrior:
    """Fit a prior to the codes of `texts` training texts of `run_dir` (`encoder_codes`, `fit_prior`) and save it
    beside the model, as `didi prior` does; the caller decides whether an existing one may be replaced."""
    mu, logvar = encoder_codes(run_dir, encoder_run, texts)
    prior = fit_prior(mu, logvar, components, seed=seed)
    prior.info["encoder"] = str(encoder_run or run_dir)
    prior.save(run_dir)
    return prior


def load_prior(run_dir: str | Path) -> NoisePrior | None:
    """The run's saved prior, or None when it has none."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    t = fileio.load_weights(path)
    missing = {"means", "variances", "log_weights"} - set(t)
    if missing:
        raise DidiError(f"{path} is not a noise prior (missing {', '.join(sorted(missing))})")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        info = json.loads(meta.get("info", "{}"))
    except json.JSONDecodeError:
        info = {}
    return NoisePrior(t["means"], t["variances"], t["log_weights"], info)


def fingerprint(run_dir: str | Path) -> str:
    """A short hash of the run's saved prior file ("" when it has none): what eval caches its rows under."""
    import hashlib

    path = Path(run_dir) / FILE
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else ""


def load_encoder(run_dir: str | Path, model: torch.nn.Module | None = None):
    """The encoder q(xi | x0) saved beside a latent student (`encoder.safetensors`), built on `model` (default: the
    run's own; any model of the same shape will do, the weights are the saved ones)."""
    from . import runs
    from .nn.encoder import SequenceEncoder

    run_dir = Path(run_dir)
    if not (run_dir / "encoder.safetensors").is_file():
        raise DidiError(f"{run_dir} has no encoder.safetensors (a run of `didi distill --method latent`); "
                        "name the latent student this run started from with --encoder")
    if model is None:
        model = runs.load_run(run_dir, "cpu").model
    weights = fileio.load_weights(run_dir / "encoder.safetensors")
    blocks = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})  # distill.latent.encoder_blocks
    encoder = SequenceEncoder(model, model.config.noise_dim, blocks)
    encoder.load_state_dict(weights)
    return encoder.eval()


def encoder_codes(run_dir: str | Path, encoder_run: str | Path | None = None, texts: int = 8192):
    """(mu, logvar) of the first `texts` training texts of `run_dir`'s data, by the encoder saved in `encoder_run`
    (default: run_dir itself; a DiDi stage started from a latent student has its start's encoder)."""
    from . import runs
    from .config import RunConfig
    from .data import prepare_data

    run_dir = Path(run_dir)
    enc_dir = Path(encoder_run) if encoder_run else run_dir
    run = runs.load_run(run_dir, "cpu")
    if not run.config.model.noise_dim:
        raise DidiError(f"{run_dir} has no noise input (model.noise_dim = 0): a prior is for a latent student")
    if enc_dir != run_dir:
        enc_cfg = RunConfig.load(runs.check_run_dir(enc_dir) / runs.CONFIG)
        tok = Path(runs.TOKENIZER_DIR, "tokenizer.json")
        if asdict(enc_cfg.model) != asdict(run.config.model) or \
                (enc_dir / tok).read_bytes() != (run_dir / tok).read_bytes():
            raise DidiError(f"{enc_dir} is not the latent student {run_dir} started from: its model or tokenizer "
                            "differs")
    encoder = load_encoder(enc_dir, run.model)
    train, _ = prepare_data(run.config.data, run.tokenizer, run.config.model.length, show_progress=False)
    n = min(texts, len(train))
    if n < 1:
        raise DidiError(f"{run_dir}'s training data is empty")
    return encode(encoder, train.get(torch.arange(n)))
