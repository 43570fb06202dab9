"""`didi eval`: sample a run at several step counts (and temperatures), score every row the same way.

A row = one (model, steps, sampler, temperature, seed) setting: `num` samples drawn in float64, judged
(decode -> re-tokenize -> exp(token-weighted NLL), first EOS counted), with unigram entropy, NFE per
sequence (mean and max), total network evaluations (with RGAS: discriminator forwards and backwards too),
wall-clock per sample and tokens/s (after a warm-up call, so first-call costs stay out), and tokens revealed
per step. Finished rows are appended to a cache (`rows.jsonl`) so a rerun only does what is missing.
Reports: JSON, a Markdown table, and PNG plots of gen-PPL vs entropy (the temperature frontier) and vs NFE.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..errors import DidiError
from ..language.prompts import PROMPT_SEED
from .metrics import interpolate_at_entropy, mean_unigram_entropy

COLUMNS = ["model", "steps", "sampler", "temperature", "judge_ppl", "entropy", "nfe", "nfe_max", "total_evals",
           "tokens_per_step", "s_per_sample", "tokens_per_s", "seed"]
GRAMMAR_COLUMNS = ["model", "steps", "sampler", "temperature", "grid_power", "valid_sentences", "valid_texts",
                   "nll_per_word", "choice_entropy_ratio", "distinct_texts", "entropy", "nfe", "nfe_max", "total_evals",
                   "tokens_per_step", "s_per_sample", "tokens_per_s", "seed"]
PROMPTED_COLUMNS = ["model", "steps", "sampler", "temperature", "prompts", "prompt_code", "valid_sentences",
                    "valid_texts", "prompt_agreement", "choice_entropy_ratio", "prompt_kept", "nfe", "s_per_sample",
                    "seed"]
PROTEIN_COLUMNS = ["model", "steps", "sampler", "temperature", "judge_ppl", "entropy", "composition_js", "length_w1",
                   "mean_length", "unique_frac", "mean_pairwise_identity", "novelty_max_identity_mean",
                   "low_complexity_frac", "repeat_frac", "nfe", "s_per_sample", "seed"]


SAMPLERS = ("ancestral", "RGAS", "ar+kv", "data")


@dataclass(frozen=True)
class RowSpec:
    """What one row samples. sampler: "ancestral" (diffusion), "RGAS" (reward-guided, a DiDi-Instruct student),
    "ar+kv" (an AR run; steps = its length), or "data" (the run's held-out blocks, the reference row)."""

    model: str
    run: str
    steps: int
    sampler: str = "ancestral"
    temperature: float = 1.0
    grid_power: float | None = None  # the sampler's time grid (None: the run's diffusion.grid_power)
    prior: str = ""  # the fingerprint of the noise prior the run's rows draw xi from ("" for N(0, I) or no noise input)
    prompts: int = 0  # prompted rows: each sample continues the first `prompts` sentences of a held-out text
    prompt_code: str = "exemplar"  # prompted rows of a student with a code input: how xi is drawn (`didi.codes`)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise DidiError(f"unknown sampler {self.sampler!r} (choose from: {', '.join(SAMPLERS)})")
        if self.prompts < 0:
            raise DidiError(f"prompts is a number of sentences >= 0, not {self.prompts}")
        if self.prompts and self.sampler == "data":
            raise DidiError("the data row is not prompted")


@dataclass
class RowCache:
    """Finished rows keyed by their settings, kept as JSON lines so an interrupted evaluation resumes."""

    path: Path
    rows: dict = field(default_factory=dict)

    @staticmethod
    def key(spec: RowSpec, num: int, seed: int, judge: str) -> str:
        key = [spec.model, str(spec.run), spec.steps, spec.sampler, spec.temperature, num, seed, judge]
        key = key if spec.grid_power is None else key + [spec.grid_power]
        key = key + ["prior", spec.prior] if spec.prior else key
        return json.dumps(key + ["prompts", spec.prompts, spec.prompt_code] if spec.prompts else key)

    def load(self) -> RowCache:
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.rows[r["key"]] = r
        return self

    def add(self, row: dict) -> None:
        self.rows[row["key"]] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # one line per finished row: a crash loses at most the row in progress
            f.write(json.dumps(row) + "\n")


def heldout_tokens(pipe, num: int) -> torch.Tensor:
    """The first `num` held-out blocks of a run's data, with its tokenizer and block length."""
    from ..data import prepare_data

    cfg = pipe.config
    _, valid = prepare_data(cfg.data, pipe.tokenizer, cfg.model.length, show_progress=False)
    if len(valid) == 0:
        raise DidiError("the run's data has no held-out blocks for the reference row")
    return valid.get(torch.arange(min(num, len(valid))))


def sample_row(pipe, spec: RowSpec, num: int, seed: int, batch_size: int, progress: bool = False,
               prefixes: list[str] | None = None) -> tuple[dict, list[str], torch.Tensor]:
    """Sample one row (timed after a small warm-up call) -> (row without judge columns, texts, tokens). prefixes:
    one prompt per sample (the warm-up takes the two longest, so a student's one-time pass over its prior's
    components for prompt codes is not timed)."""
    if spec.sampler == "data":
        tokens = heldout_tokens(pipe, num)
        if getattr(pipe, "is_protein", False):
            from ..protein import residues

            texts = [residues(r, pipe.tokenizer) for r in tokens.tolist()]
            return {"entropy": mean_unigram_entropy([pipe.tokenizer.encode(t) for t in texts])}, texts, tokens
        row = {"entropy": mean_unigram_entropy(tokens)}
        return row, pipe.decode(tokens), tokens
    steps = spec.steps
    kw = dict(temperature=spec.temperature, guided=spec.sampler == "RGAS", grid_power=spec.grid_power)
    warm = None
    if prefixes is not None:
        kw["prompt_code"] = spec.prompt_code
        warm = sorted(prefixes, key=len)[-2:]
    pipe.sample(num=len(warm) if warm else 2, steps=min(steps, 2), seed=seed + 1, prefix=warm, **kw)  # warm-up
    out = pipe.sample(num=num, steps=steps, seed=seed, batch_size=batch_size, progress=progress, prefix=prefixes,
                      **kw)
    L = out.tokens.shape[1]
    ent_ids = [pipe.tokenizer.encode(t) for t in out.text] if getattr(pipe, "is_protein", False) else out.tokens
    row = {"entropy": mean_unigram_entropy(ent_ids), "nfe": out.nfe_mean, "nfe_max": out.nfe_max,
           "total_evals": float(out.total_evals.double().mean()), "tokens_per_step": L / steps,
           "s_per_sample": out.seconds / num, "tokens_per_s": num * L / out.seconds}
    return row, out.text, out.tokens


def run_rows(specs: list[RowSpec], *, num: int, seed: int, judge_name: str, cache: RowCache, batch_size: int = 64,
             samples_dir: Path | None = None, progress: bool = True, load=None) -> list[dict]:
    """Every row of `specs`, from the cache when finished before; new rows are sampled, judged and cached."""
    from . import load_judge

    if load is None:  # rows labelled by run name only: a noise input is drawn from N(0, I), never a saved prior
        from ..api import load as load_run

        def load(run):
            return load_run(run, noise_prior="normal")
    judge, pipes, rows, prompt_sets = None, {}, [], {}
    for spec in specs:
        key = RowCache.key(spec, num, seed, judge_name)
        if key in cache.rows:
            rows.append(cache.rows[key])
            continue
        if judge is None:
            judge = load_judge(judge_name, batch_size=16)
        if spec.run not in pipes:
            pipes[spec.run] = load(spec.run)
        if progress:
            print(f"didi eval: {spec.model}, {spec.sampler}, {spec.steps} steps, temperature {spec.temperature:g}",
                  flush=True)
        pipe = pipes[spec.run]
        prompts = None
        if spec.prompts:
            if not hasattr(judge, "grammar"):
                raise DidiError("prompted rows cut their prompts from a reference language: --judge grammar:NAME")
            from ..language import heldout_prompts

            if spec.prompts not in prompt_sets:  # the same prompts for every row of this many sentences
                prompt_sets[spec.prompts] = heldout_prompts(judge.grammar, num, spec.prompts)
            prompts = prompt_sets[spec.prompts]
        row, texts, tokens = sample_row(pipe, spec, num, seed, batch_size, progress,
                                        prefixes=prompts and [p.text for p in prompts])
        start = time.perf_counter()
        row.update(judge.score(texts) if prompts is None else judge.score_prompted(prompts, texts))
        if getattr(pipe, "is_protein", False):
            from .protein import protein_metrics

            heldout, train = protein_reference(pipe)
            row.update(protein_metrics(texts, heldout, train, seed=seed))
        grid = pipe.config.diffusion.grid_power if spec.grid_power is None else spec.grid_power
        if prompts is not None:
            row.update(prompts=spec.prompts,
                       prompt_code=spec.prompt_code if getattr(pipe.config.model, "noise_dim", 0) else "")
        row.update(model=spec.model, run=str(spec.run), steps=spec.steps, sampler=spec.sampler,
                   temperature=spec.temperature, grid_power=grid if spec.sampler in ("ancestral", "RGAS") else None,
                   seed=seed, num=len(texts), judge=judge_name,
                   judge_seconds=time.perf_counter() - start, key=key)
        if samples_dir is not None:
            samples_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{spec.model}.{spec.sampler}.{spec.steps}.T{spec.temperature:g}.seed{seed}".replace(" ", "_")
            stem += "" if spec.grid_power is None else f".p{spec.grid_power:g}"
            stem += f".prompt{spec.prompts}.{spec.prompt_code}" if spec.prompts else ""
            torch.save(tokens.to(torch.int32), samples_dir / f"{stem}.pt")  # all ids: rows can be re-judged later
            (samples_dir / f"{stem}.txt").write_text("\n=====\n".join(texts[:16]) + "\n")
        cache.add(row)
        rows.append(row)
    return rows


def protein_reference(pipe, max_train: int = 5000) -> tuple[list[str], list[str]]:
    """Held-out and (the first `max_train`) training sequences of a protein run's data, for the metrics."""
    from itertools import islice

    from ..data import read_documents

    d = pipe.config.data
    if not d.valid_source:
        raise DidiError("protein metrics need the run's held-out data: train with --valid-data FASTA")
    return list(read_documents(d.valid_source, d.ambiguous)), list(islice(read_documents(d.source, d.ambiguous),
                                                                          max_train))


def frontier_axes(rows: list[dict]) -> tuple[str, str, bool]:
    """(diversity column, quality column, quality on a log scale) of a report: unigram entropy and gen-PPL for
    LM judges, choice-entropy ratio and valid-sentence share for a grammar judge."""
    if any("valid_sentences" in r for r in rows):
        return "choice_entropy_ratio", "valid_sentences", False
    return "entropy", "judge_ppl", True


def frontier_rows(rows: list[dict], target_entropy: float | None) -> list[dict]:
    """Per (model, steps, sampler) with two or more temperatures: the quality column (gen-PPL, or the valid-sentence
    share for a grammar judge) interpolated at `target_entropy` of the diversity column (`frontier_axes`)."""
    x, y, log_y = frontier_axes(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["sampler"] != "data":
            groups.setdefault((r["model"], r["steps"], r["sampler"]), []).append(r)
    out = []
    for (model, steps, sampler), rs in groups.items():
        temps = sorted({r["temperature"] for r in rs})
        if len(temps) < 2 or target_entropy is None:
            continue
        value = interpolate_at_entropy([(r[x], r[y]) for r in rs], target_entropy, log_y=log_y)
        out.append({"model": model, "steps": steps, "sampler": sampler, "temperatures": temps,
                    "target_entropy": target_entropy, f"{y}_at_target": value})
    return out


def plot_rows(rows: list[dict], out_dir: Path, name: str, target_entropy: float | None) -> list[Path]:
    """PNG plots: quality vs NFE (temperature 1 rows) and, when temperatures were swept, the frontier
    (gen-PPL vs unigram entropy, or valid sentences vs choice-entropy ratio for a grammar judge)."""
    from .plots import plot_frontier, plot_ppl_vs_nfe

    x, y, log_y = frontier_axes(rows)
    labels = {"judge_ppl": "generative perplexity", "valid_sentences": "valid sentences",
              "entropy": "unigram entropy (nats)", "choice_entropy_ratio": "choice entropy / true"}
    paths = []
    by_nfe: dict[str, list] = {}
    for r in rows:
        if r["sampler"] != "data" and r["temperature"] == 1.0 and r.get("total_evals"):
            label = r["model"] + (" (RGAS)" if r["sampler"] == "RGAS" else "")
            by_nfe.setdefault(label, []).append((r["total_evals"], r[y]))
    if by_nfe:
        p = out_dir / f"{name}_{'ppl' if y == 'judge_ppl' else 'validity'}_vs_nfe.png"
        plot_ppl_vs_nfe(by_nfe, p, ylabel=labels[y], log_y=log_y)
        paths.append(p)
    fr: dict[str, list] = {}
    for r in rows:
        if r["sampler"] != "data":
            fr.setdefault(f"{r['model']} {r['steps']} steps" + (" RGAS" if r["sampler"] == "RGAS" else ""),
                          []).append((r[x], r[y]))
    fr = {k: v for k, v in fr.items() if len(v) >= 2}
    if fr:
        p = out_dir / f"{name}_frontier.png"
        plot_frontier(fr, p, target_entropy, xlabel=labels[x], ylabel=labels[y], log_y=log_y)
        paths.append(p)
    return paths


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return "" if v is None else str(v)


def markdown(rows: list[dict], meta: dict, frontier: list[dict], columns: list[str] = COLUMNS) -> str:
    x, y, _ = frontier_axes(rows)
    m = meta.get("machine", {})
    lines = [f"# {meta.get('name', 'eval')}", "",
             f"commit `{meta.get('commit', '?')}`, {meta.get('date', '')}, {m.get('cpu', '?')} ({m.get('cores', '?')} "
             f"cores, torch {m.get('torch', '?')}), judge {meta.get('judge', '?')}, {meta.get('num', '?')} samples "
             f"per row, float64 draws", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    if frontier:
        lines += ["", f"{y} interpolated at {x} {frontier[0]['target_entropy']:.3g} (temperature sweep):", "",
                  f"| model | steps | sampler | temperatures | {y}_at_target |", "|---|---|---|---|---|"]
        lines += [f"| {f['model']} | {f['steps']} | {f['sampler']} | {', '.join(f'{t:g}' for t in f['temperatures'])} "
                  f"| {fmt(f[f'{y}_at_target']) or 'outside the swept range'} |" for f in frontier]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_reports(rows: list[dict], out_dir: Path, name: str, meta: dict, target_entropy: float | None) -> dict:
    """Write NAME.json, NAME.md and the PNG plots into `out_dir` (each written whole, then renamed)."""
    from ..fileio import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            **meta}
    front = frontier_rows(rows, target_entropy)
    clean = [{k: v for k, v in r.items() if k != "key"} for r in rows]
    atomic_write_text(out_dir / f"{name}.json", json.dumps({**meta, "rows": clean, "frontier": front}, indent=2) + "\n")
    columns = (PROTEIN_COLUMNS if any("composition_js" in r for r in clean)
               else PROMPTED_COLUMNS if any(r.get("prompts") for r in clean)
               else GRAMMAR_COLUMNS if any("valid_sentences" in r for r in clean) else COLUMNS)
    atomic_write_text(out_dir / f"{name}.md", markdown(clean, meta, front, columns))
    pngs = plot_rows(clean, out_dir, name, target_entropy)
    return {"json": out_dir / f"{name}.json", "markdown": out_dir / f"{name}.md", "plots": pngs, "frontier": front}


def evaluate(run: str, steps: list[int], *, num: int = 256, judge: str = "smollm2-135m", seed: int = 0,
             temperatures: tuple[float, ...] = (1.0,), guided: bool = False, reference: bool = False,
             target_entropy: float | None = None, batch_size: int = 64, out: str | Path | None = None,
             name: str = "eval", domain: str | None = None, grid_power: float | None = None,
             noise_prior: str = "run", prompts: int = 0, prompt_code: str = "exemplar", progress: bool = True) -> dict:
    """Evaluate one run at `steps` x `temperatures` (plus RGAS rows with `guided`, the held-out data row with
    `reference`). The frontier's target entropy defaults to the data row's entropy when there is one.
    grid_power: the sampler's time grid for every diffusion row (default: the run's own).
    noise_prior: a student with a noise input draws xi from the run's saved prior ("run", when it has one: its rows
    are labelled RUN+prior) or from N(0, I) ("normal").
    prompts: k > 0 makes every row prompted (a grammar judge): sample i continues the first k sentences of held-out
    text i (`didi.language.prompts`), and a student with a code input draws it by `prompt_code` (`didi.codes`)."""
    if not steps:
        raise DidiError("eval needs at least one step count (--steps 8,16,...)")
    if any(s < 1 for s in steps):
        raise DidiError("step counts must be >= 1")
    if num < 1:
        raise DidiError("num must be >= 1")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise DidiError("temperatures must be > 0")
    if grid_power is not None and grid_power <= 0:
        raise DidiError(f"grid power must be > 0, not {grid_power}")
    if prompts and not judge.startswith("grammar:"):
        raise DidiError("prompted rows (--prompts) need a reference-language judge: --judge grammar:NAME")
    if prompts and (guided or reference):
        raise DidiError("prompted rows are plain ancestral samples: drop --guided and --reference")
    from ..codes import check_prompt_code

    check_prompt_code(prompt_code)
    from ..api import load

    pipe = load(run, noise_prior=noise_prior)
    if domain is not None and domain != pipe.config.data.domain:
        raise DidiError(f"{run} is a {pipe.config.data.domain} run, not {domain}")
    if pipe.is_protein and judge == "smollm2-135m":
        raise DidiError("a protein run needs a protein judge: --judge AR_RUN (train one with "
                        "didi train --arch ar --domain protein)")
    out_dir = Path(out) if out is not None else (Path(run) / "eval" if Path(run).is_dir() else Path("eval"))
    label = Path(run).name or str(run)
    prior = pipe.prior()  # None without a noise input or a saved prior
    mark = ""
    if prior is not None:
        from ..prior import fingerprint

        label, mark = label + "+prior", fingerprint(run)
    if pipe.config.model.arch == "ar":  # one row per temperature: an AR model writes one token per call
        specs = [RowSpec(label, run, pipe.config.model.length, "ar+kv", t, prompts=prompts) for t in temperatures]
    else:
        specs = [RowSpec(label, run, s, "ancestral", t, grid_power, mark, prompts, prompt_code)
                 for s in steps for t in temperatures]
        if guided:
            specs += [RowSpec(label, run, s, "RGAS", t, grid_power, mark) for s in steps for t in temperatures]
    if reference:
        specs.insert(0, RowSpec("data", run, 0, "data"))
    cache = RowCache(out_dir / f"{name}.rows.jsonl").load()
    rows = run_rows(specs, num=num, seed=seed, judge_name=judge, cache=cache, batch_size=batch_size,
                    samples_dir=out_dir / "samples", progress=progress, load=lambda _run: pipe)
    if target_entropy is None and reference:
        target_entropy = rows[0][frontier_axes(rows)[0]]
    meta = {"run": str(run), "judge": judge, "num": num, "seed": seed, "temperatures": list(temperatures),
            "target_entropy": target_entropy, "commit": git_commit()}
    if prompts:
        meta["prompts"] = {"sentences": prompts, "prompt_code": prompt_code, "texts_seed": PROMPT_SEED}
    if getattr(pipe.config.model, "noise_dim", 0):
        meta["noise_prior"] = {**prior.info, "fingerprint": mark} if prior is not None else "N(0, I)"
    report = write_reports(rows, out_dir, name, meta, target_entropy)
    report["rows"] = rows
    return report


def git_commit() -> str:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
