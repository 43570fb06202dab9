"""The Python API, mirrored by the CLI: train a run, load a run, sample from it."""

from __future__ import annotations

from pathlib import Path

import torch

from . import runs
from .config import RunConfig
from .errors import DidiError
from .sampling import SampleOutput, SplitDenoiser, ancestral_sample

# what --resume may change: run length, logging and where things are; everything else is the trajectory
RESUMABLE_CHANGES = {"train.max_steps", "train.max_minutes", "train.device", "train.log_every", "train.eval_every",
                     "train.eval_batches", "train.save_every", "train.snapshot_every", "data.source",
                     "data.valid_source", "data.cache_dir", "preset", "model.vocab_size"}  # vocab: the tokenizer's


def _refuse_changes_on_resume(saved: RunConfig, cfg: RunConfig) -> None:
    a, b = saved.to_dict(), cfg.to_dict()
    changed = []
    for section, values in a.items():
        if isinstance(values, dict):
            changed += [f"{section}.{k}" for k, v in values.items() if b.get(section, {}).get(k, v) != v]
    changed = [c for c in changed if c not in RESUMABLE_CHANGES]
    if changed:
        raise DidiError(f"cannot resume with a different {', '.join(changed)} (the run was trained with "
                        f"{', '.join(f'{c}={_get(a, c)!r}' for c in changed)}); start a new run instead")


def _get(d: dict, dotted: str):
    section, key = dotted.split(".")
    return d[section][key]


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, until_step: int | None = None,
          progress: bool = True) -> dict:
    """Train a model (MDLM teacher or AR baseline, by `cfg.model.arch`) into the run directory `out`.

    With `resume=True` the run continues from `out/checkpoint.pt` on the exact same trajectory.
    `until_step` stops early (the schedule still follows `cfg.train.max_steps`). Returns the last metrics.
    """
    import torch.distributed as dist

    cfg.validate()

    from .data import prepare_data, read_documents
    from .methods import make_method
    from .tokenizers import Tokenizer, get_tokenizer
    from .trainer import PartSpec, Trainer, init_distributed, resolve_device

    out = Path(out)
    d = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, d)
    barrier = dist.barrier if d.world > 1 else (lambda: None)
    with runs.removed_if_start_fails(out, enabled=d.main and not resume):  # a failed start leaves nothing
        if resume:
            runs.check_run_dir(out)
            if not runs.has_checkpoint(out):
                raise DidiError(f"cannot resume: {out} has no {runs.CHECKPOINT}")
            _refuse_changes_on_resume(RunConfig.load(out / runs.CONFIG), cfg)
            tok = Tokenizer.load(out / runs.TOKENIZER_DIR)
            cfg.model.vocab_size = tok.model_vocab_size
        else:
            if (out / runs.CONFIG).exists() or (out / runs.CHECKPOINT).exists():
                raise DidiError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
            if not cfg.data.source:
                raise DidiError("no training data: pass --data PATH (a .txt/.jsonl file, a directory or hf:NAME)")
            if d.main:
                tok = get_tokenizer(cfg.data.tokenizer, texts=lambda: read_documents(cfg.data.source))
                tok.save(out / runs.TOKENIZER_DIR)
            barrier()
            tok = Tokenizer.load(out / runs.TOKENIZER_DIR)
            cfg.model.vocab_size = tok.model_vocab_size
        if d.main:  # the first process fills the token cache; the others then read it
            data = prepare_data(cfg.data, tok, cfg.model.length, show_progress=progress)
        barrier()
        if not d.main:
            data = prepare_data(cfg.data, tok, cfg.model.length, show_progress=False)
        train_blocks, valid_blocks = data
        if cfg.data.domain == "protein" and d.main and not resume:
            from .protein import save_lengths

            save_lengths(out, train_blocks, tok)  # sampling draws lengths from it

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = runs.build_model(cfg)
        torch.manual_seed(cfg.train.seed + d.rank)  # dropout differs per rank
        method = make_method(cfg, tok)
        t = cfg.train
        specs = {"model": PartSpec(model, lr=t.lr, max_steps=t.max_steps, warmup_steps=t.warmup_steps,
                                   min_lr_ratio=t.min_lr_ratio, betas=t.betas, weight_decay=t.weight_decay,
                                   grad_clip=t.grad_clip, ema=t.ema)}
        trainer = Trainer(cfg, out, method, specs, train_blocks, valid_blocks, d, device, progress=progress)
        if d.main and not resume:  # written last: a start that failed before this leaves nothing that blocks a retry
            runs.save_data_counts(out, train_blocks)
            cfg.save(out / runs.CONFIG)
    if d.main:
        print(f"didi: {cfg.model.arch} with {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
              f"{len(train_blocks)} training blocks of {cfg.model.length} tokens, device {device}, "
              f"{d.world} process(es)")
    if resume:
        trainer.resume()
    return trainer.train(until_step=until_step)


SAMPLE_BATCH = 256  # sequences per sampling batch unless the caller says otherwise


class Pipeline:
    """A loaded model with its tokenizer: `pipe.sample(num=8, steps=64)`."""

    def __init__(self, run: runs.Run, device: str = "cpu", noise_prior: str = "run"):
        """noise_prior (a student with a noise input): "run" draws xi from the run's saved prior (`didi prior`,
        `noise_prior.safetensors`) when it has one and from N(0, I) otherwise; "normal" always from N(0, I)."""
        if noise_prior not in ("run", "normal"):
            raise DidiError(f"noise_prior must be 'run' or 'normal', not {noise_prior!r}")
        self.run, self.device, self.noise_prior = run, device, noise_prior
        self._prior = None
        from .codes import EXEMPLAR_SHARPNESS

        self.exemplar_sharpness = EXEMPLAR_SHARPNESS  # prompt codes: `didi.codes.exemplar_codes`

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def tokenizer(self):
        return self.run.tokenizer

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def is_protein(self) -> bool:
        return self.config.data.domain == "protein"

    def compile(self) -> Pipeline:
        """Compile the network for sampling with `torch.compile(dynamic=True)`: the DiT body (`hidden_states`, what
        every sampler calls), or AR decoding's cached step. The first call after it compiles (seconds); on 2 CPU
        cores the 8-step student then ran 1.15-1.5x faster (bench/results/speed.md, section settings). Compiles in
        place, once (a second call does nothing); a copy of the model made afterwards runs uncompiled."""
        if getattr(self, "_compiled", False):
            return self
        self._compiled = True
        if self.config.model.arch == "ar":
            self.model.forward_cached = torch.compile(self.model.forward_cached, dynamic=True)
        else:
            self.model.hidden_states = torch.compile(self.model.hidden_states, dynamic=True)
        return self

    def prior(self):
        """The `NoisePrior` xi is drawn from, or None for N(0, I) (see `noise_prior`)."""
        if self.noise_prior == "normal" or getattr(self.run, "path", None) is None:
            return None
        if self._prior is None:
            from .prior import load_prior

            prior = load_prior(self.run.path)
            if prior is not None and prior.dim != getattr(self.config.model, "noise_dim", 0):
                raise DidiError(f"{self.run.path}'s noise prior has {prior.dim} dimensions, the model's noise "
                                f"input {self.config.model.noise_dim}")
            self._prior = prior or False
        return self._prior or None

    def denoiser(self, num: int = 0, generator: torch.Generator | None = None, clamp: torch.Tensor | None = None,
                 prompt_code: str = "exemplar"):
        """The model as a `SplitDenoiser`. A model with a noise input (a student distilled with
        `distill.student_noise_dim`) gets one draw of xi per sequence for `num` sequences from `generator`:
        from the run's saved prior (`prior()`), else xi ~ N(0, I); when `clamp` [num, L] fixes tokens (a prompt),
        xi given them, by `prompt_code` (`didi.codes`: "exemplar", "encoder", or "prior" to ignore them)."""
        from .codes import check_prompt_code, clamped_positions

        model = self.model
        noise = None
        dim = getattr(self.config.model, "noise_dim", 0)
        check_prompt_code(prompt_code)
        if dim:
            if num < 1:
                raise DidiError("this model takes a noise input per sequence: say how many sequences (num)")
            gdev = generator.device if generator is not None else torch.device(self.device)
            prior = self.prior()
            fixed = None if clamp is None else clamped_positions(clamp, self.config.data.layout == "rows")
            if fixed is not None and fixed.any() and prompt_code != "prior":
                noise = self.prompt_codes(clamp, fixed, prompt_code, generator).to(self.device)
            elif prior is not None:  # generator None: the global RNG, as torch.randn below
                noise = prior.sample(num, generator).to(self.device)
            else:
                noise = torch.randn(num, dim, generator=generator, device=gdev).to(self.device)
        blocked = []
        if self.is_protein:  # residues seen in training only: the specials are placed by the length clamp
            from .protein import load_lengths

            tok = self.tokenizer
            blocked = [i for i in (tok.bos_id, tok.eos_id, tok.pad_id, tok.hf.token_to_id("<unk>")) if i is not None]
            blocked += load_lengths(self.run.path).get("unseen_residue_ids", [])

        return SplitDenoiser(model, blocked, noise)

    def prompt_codes(self, clamp: torch.Tensor, fixed: torch.Tensor, method: str,
                     generator: torch.Generator | None) -> torch.Tensor:
        """Codes xi [num, D] given the clamped tokens (`didi.codes`)."""
        from . import codes

        prior = self.prior()
        if method == "exemplar":
            if prior is None:
                raise DidiError(f"{self.run.path}: exemplar codes for a prompt weigh the run's prior, and it has none "
                                f"(fit one: didi prior {self.run.path}), or use prompt_code 'encoder' or 'prior'")
            if getattr(self, "_scorer", None) is None or self._scorer.prior is not prior:
                self._scorer = codes.ExemplarScorer(self.model, prior, self.tokenizer.mask_id,
                                                    codes.sigma_at_one(self.config.diffusion.eps))
            return codes.exemplar_codes(self._scorer, clamp, fixed, self.exemplar_sharpness, generator)
        return codes.encoder_codes_for(self.encoder(), clamp, self.tokenizer.mask_id, generator)

    def encoder(self) -> torch.nn.Module:
        """The encoder q(xi | x) of the latent student this run is (or started from: its prior names it)."""
        if getattr(self, "_encoder", None) is None:
            from .prior import load_encoder

            if self.run.path is None:
                raise DidiError("encoder codes need a run directory with encoder.safetensors")
            prior = self.prior()
            named = Path(prior.info["encoder"]) if prior is not None and prior.info.get("encoder") else None
            where = named if named is not None and (named / "encoder.safetensors").is_file() else self.run.path
            self._encoder = load_encoder(where, self.model).to(self.device)
        return self._encoder

    def protein_clamp(self, num: int, generator: torch.Generator) -> torch.Tensor:
        """Lengths drawn from the run's training histogram, as a BOS/EOS/PAD clamp."""
        from .protein import draw_lengths, length_clamp, load_lengths

        hist = load_lengths(self.run.path)
        return length_clamp(draw_lengths(hist, num, generator), self.config.model.length, self.tokenizer)

    def clamp_from_text(self, num: int, prefix: str | None, suffix: str | None) -> torch.Tensor | None:
        """Clamped ids: the prefix at the start and the suffix at the end of each row; text rows (data.layout
        "rows") also clamp their first position to the EOS every row starts with."""
        rows = self.config.data.layout == "rows" and not self.is_protein
        if not prefix and not suffix and not rows:
            return None
        L = self.config.model.length
        clamp = torch.full((num, L), -1, dtype=torch.long)
        pre = self.tokenizer.encode(prefix) if prefix else []
        suf = self.tokenizer.encode(suffix) if suffix else []
        if rows:
            if suf:
                raise DidiError("a text-rows run writes texts of any length: condition on a prefix, not a suffix")
            pre = [self.tokenizer.eos_id, *pre]
        if len(pre) + len(suf) > L:
            raise DidiError(f"prefix and suffix take {len(pre) + len(suf)} tokens; the model length is {L}")
        if pre:
            clamp[:, : len(pre)] = torch.tensor(pre)
        if suf:
            clamp[:, L - len(suf):] = torch.tensor(suf)
        return clamp

    def sample(self, num: int = 8, steps: int = 64, *, seed: int = 0, batch_size: int | None = None,
               temperature: float = 1.0, top_p: float = 1.0, prefix: str | None = None, suffix: str | None = None,
               clamp: torch.Tensor | None = None, final_step: str = "argmax", cache: bool | None = None,
               guided: bool = False, rho: float = 0.5, h0: float = 30.0, h1: float = 40.0, candidates: int = 4,
               grid_power: float | None = None, prompt_code: str = "exemplar", progress: bool = False) -> SampleOutput:
        """Generate `num` sequences. Float64 draws; NFE counted per sequence; text decoded. Sampled in batches of
        `batch_size` (default: at most SAMPLE_BATCH); `stream` yields them one by one.

        guided: reward-guided ancestral sampling (RGAS, `didi.guidance`) with the discriminator saved
        beside a distilled student; `total_evals` then counts its forwards and backwards too.
        grid_power: the time grid (`sampling.time_grid`); default the run's `diffusion.grid_power` (a student
        distilled on a grid samples on it).
        prefix: one text every sample starts with, or a list of `num` texts, one per sample.
        prompt_code: how a student with a code input (a latent student) draws its code when tokens are fixed
        (`didi.codes`): "exemplar" (default), "encoder", or "prior" (ignore them). Unprompted calls draw from the prior.
        """
        outs = list(self.stream(num, steps, seed=seed, batch_size=batch_size, temperature=temperature, top_p=top_p,
                                prefix=prefix, suffix=suffix, clamp=clamp, final_step=final_step, cache=cache,
                                guided=guided, rho=rho, h0=h0, h1=h1, candidates=candidates, grid_power=grid_power,
                                prompt_code=prompt_code, progress=progress))
        return SampleOutput(tokens=torch.cat([o.tokens for o in outs]), nfe=torch.cat([o.nfe for o in outs]),
                            seconds=sum(o.seconds for o in outs),
                            total_evals=torch.cat([o.total_evals for o in outs]),
                            text=[t for o in outs for t in o.text])

    def stream(self, num: int = 8, steps: int = 64, *, seed: int = 0, batch_size: int | None = None,
               temperature: float = 1.0, top_p: float = 1.0, prefix: str | None = None, suffix: str | None = None,
               clamp: torch.Tensor | None = None, final_step: str = "argmax", cache: bool | None = None,
               guided: bool = False, rho: float = 0.5, h0: float = 30.0, h1: float = 40.0, candidates: int = 4,
               grid_power: float | None = None, prompt_code: str = "exemplar", progress: bool = False):
        """`sample`, one batch at a time: yields a SampleOutput (tokens on the CPU, text decoded) per batch of at most
        `batch_size` sequences, so any `num` runs in bounded memory."""
        if num < 1:
            raise DidiError("num must be >= 1")
        if steps < 1:
            raise DidiError("steps must be >= 1")
        if batch_size is not None and batch_size < 1:
            raise DidiError("batch_size must be >= 1")
        grid_power = self.config.diffusion.grid_power if grid_power is None else grid_power
        if grid_power <= 0:
            raise DidiError(f"grid power must be > 0, not {grid_power}")
        if isinstance(prefix, (list, tuple)):  # one prefix per sample: an explicit clamp
            if clamp is not None:
                raise DidiError("give either per-sample prefixes or a clamp, not both")
            if len(prefix) != num:
                raise DidiError(f"{len(prefix)} prefixes for {num} samples: give one per sample, or one string")
            L = self.config.model.length
            rows = [self.clamp_from_text(1, p, suffix) for p in prefix]
            clamp = torch.cat([torch.full((1, L), -1, dtype=torch.long) if r is None else r for r in rows])
            prefix = None
        text_clamp = self.clamp_from_text(1, prefix, suffix) if clamp is None else None  # one row, every batch
        batch_size = batch_size or min(num, SAMPLE_BATCH)
        gen = torch.Generator(self.device).manual_seed(seed)
        mcfg = self.config.model
        if self.is_protein and mcfg.arch == "dit":
            if clamp is not None or text_clamp is not None:
                raise DidiError("protein sampling sets lengths itself; prefix/suffix/clamp are for text runs")
            clamp = self.protein_clamp(num, torch.Generator().manual_seed(seed))
        use_cache = (not mcfg.time_conditioning) if cache is None else cache
        for start in range(0, num, batch_size):
            n = min(batch_size, num - start)
            c = (clamp[start:start + n] if clamp is not None
                 else text_clamp.repeat(n, 1) if text_clamp is not None else None)
            if mcfg.arch == "ar":
                if guided:
                    raise DidiError("guided sampling needs a distilled diffusion student, not an AR model")
                out = self._sample_ar(n, c, temperature, top_p, gen)
            elif guided:
                from .guidance import rgas_sample

                out = rgas_sample(self.denoiser(n, gen, c, prompt_code), self.discriminator(), n, mcfg.length, steps,
                                  self.tokenizer.mask_id, rho=rho, h0=h0, h1=h1, candidates=candidates, clamp=c,
                                  temperature=temperature, top_p=top_p, final_step=final_step, cache=use_cache,
                                  generator=gen, device=self.device, progress=progress, grid_power=grid_power)
            else:
                out = ancestral_sample(self.denoiser(n, gen, c, prompt_code), n, mcfg.length, steps,
                                       self.tokenizer.mask_id, clamp=c, temperature=temperature, top_p=top_p,
                                       final_step=final_step, cache=use_cache, generator=gen, device=self.device,
                                       progress=progress, grid_power=grid_power)
            total = out.total_evals if out.total_evals is not None else out.nfe
            yield SampleOutput(tokens=out.tokens.cpu(), nfe=out.nfe, seconds=out.seconds, total_evals=total,
                               text=self.decode(out.tokens))

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Texts of sampled rows: protein residues; for a text run with one document per row (data.layout
        "rows") the text before the first EOS; for packed blocks everything, EOS included."""
        ids = tokens.cpu().tolist()
        if self.is_protein:
            from .protein import residues

            return [residues(r, self.tokenizer) for r in ids]
        if self.config.data.layout == "rows":  # EOS, the text, EOS ...
            eos = self.tokenizer.eos_id
            ids = [r[1:][:r[1:].index(eos)] if eos in r[1:] else r[1:] for r in ids]
        return self.tokenizer.decode_batch(ids)

    def discriminator(self) -> torch.nn.Module:
        """The discriminator saved beside a distilled student (loaded once)."""
        if getattr(self, "_disc", None) is None:
            from .distill import load_distill_config
            from .interop import load_discriminator

            if self.run.path is None:
                raise DidiError("guided sampling needs a run directory with discriminator.safetensors")
            dcfg = load_distill_config(self.run.path) if (self.run.path / runs.CONFIG).is_file() else None
            if dcfg is not None and dcfg.method == "didi-instruct" and dcfg.didi.reward_source == "teacher":
                raise DidiError(f"{self.run.path} was distilled with distill.didi.reward_source=teacher: it has no "
                                "discriminator, so guided sampling has nothing to follow; sample without --guided")
            self._disc = load_discriminator(self.run.path, self.device)
        return self._disc

    def _sample_ar(self, n, clamp, temperature, top_p, gen) -> SampleOutput:
        import time

        from .nn.ar import generate

        prefix = None
        if clamp is not None:  # each row's prefix (rows may differ in length: -1 after a shorter one)
            lengths = (clamp >= 0).sum(1)
            is_prefix = (clamp >= 0) == (torch.arange(clamp.shape[1])[None] < lengths[:, None])
            if not is_prefix.all():
                raise DidiError("an autoregressive model can only be conditioned on a prefix")
            prefix = clamp[:, :int(lengths.max())].to(self.device)
        tok = self.tokenizer
        start = time.perf_counter()
        tokens, calls = generate(self.model, n, self.config.model.length,
                                 bos_id=tok.bos_id if tok.bos_id is not None else tok.eos_id, mask_id=tok.mask_id,
                                 prefix=prefix, temperature=temperature, top_p=top_p, generator=gen)
        nfe = torch.full((n,), calls, dtype=torch.long)
        return SampleOutput(tokens=tokens, nfe=nfe, seconds=time.perf_counter() - start, total_evals=nfe.clone())


def load(source: str | Path, device: str = "cpu", noise_prior: str = "run") -> Pipeline:
    """Load a didi run directory, or an official checkpoint (`hf:REPO`, a directory, a .ckpt) converted on the fly.
    noise_prior: see `Pipeline`."""
    from .trainer import check_device

    device = check_device(device)
    path = Path(source)
    if path.is_dir() and (path / runs.CONFIG).is_file() and _is_run_config(path / runs.CONFIG):
        if not (path / runs.TOKENIZER_DIR).is_dir():
            raise DidiError(f"{path} is a didi run without its {runs.TOKENIZER_DIR}/ directory; copy it back from the "
                            "run it came from, or train again")
        return Pipeline(runs.load_run(path, device), device, noise_prior)
    from . import interop

    return Pipeline(interop.load(str(source), device=device), device, noise_prior)


def _is_run_config(path: Path) -> bool:
    """A didi run's config.json (sections model and train), not an official checkpoint's."""
    from .fileio import read_json

    try:
        d = read_json(path)
    except DidiError:
        return False
    return isinstance(d, dict) and isinstance(d.get("model"), dict) and isinstance(d.get("train"), dict)
