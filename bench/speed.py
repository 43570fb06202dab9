"""Generation speed on this machine: the sampler's share of time outside the network, latency (batch 1) and
throughput (batch 64) of the distilled student, the teacher and AR with a KV cache on the reference language,
the same at lengths 512 and 1024, and what inference mode, torch.compile and the thread count change.

Usage (the runs of bench/reference.py):
  python bench/speed.py --teacher runs/reference/teacher --student runs/reference/didi-p3-s0 \
      --ar runs/reference/ar --quality bench/results/reference.json [--lengths 512,1024] [--name speed]

Sections (the `section` column):
  overhead    8-step sampling at batch 32: total time, time inside the network, the share outside it; the sampler
              of commit 0bf8263 (`legacy`, kept below) beside the current one with full logits at every step, as
              shipped (the output layer only where a token is drawn, `SplitDenoiser`), and with the exponential
              race (`draw="race"`), same model, same run
  latency     seconds to one full sequence at batch 1 (median of --repeats), with ratios to AR with a KV cache
  throughput  sequences per second at batch 64
  long        latency and throughput at longer lengths: untrained models of the same shape (time does not depend
              on the weights: every sampler here runs its full number of steps), --long-batch sequences per call
  settings    the 8-step student and AR at batch 1 and 64: the sampler bodies under no_grad, full logits at every
              step, as shipped (inference_mode, output layer where drawn), with torch.compile(dynamic=True) of the
              DiT body and AR's forward_cached (first_call_s: the call that compiles), and with 1 thread
Quality (valid sentences) comes from the reference benchmark's rows of the same runs and sampler settings.
Writes NAME.json, NAME.md and NAME.png (latency against steps, the AR line, one panel per length).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from common import RESULTS, write_results

import didi
from didi.config import RunConfig, preset
from didi.diffusion import LogLinearSchedule
from didi.nn.ar import CausalTransformer, generate
from didi.nn.dit import DIT
from didi.sampling import SplitDenoiser, ancestral_sample, initial_state, reveal_probability, time_grid


def legacy_sample(denoiser, batch: int, length: int, steps: int, mask_id: int, generator, grid_power: float = 1.0):
    """The ancestral sampler as it was at commit 0bf8263 (same law): autograd left on, every step's logits copied
    into a cache tensor, the mask column blocked by concatenation, float64 probabilities and an exponential race."""
    sched = LogLinearSchedule()
    z = initial_state(batch, length, mask_id, None, "cpu")
    out = None
    grid = time_grid(steps, 1e-5, grid_power)
    for i in range(steps):
        t, s = float(grid[i]), float(grid[i + 1])
        need = (z == mask_id).any(1)
        if need.any():
            o = denoiser(z[need], sched.sigma(torch.full((int(need.sum()),), t, dtype=torch.float64)).float()).float()
            out = torch.zeros(batch, *o.shape[1:]) if out is None else out
            out[need] = o
        masked = z == mask_id
        if not masked.any():
            continue
        u = torch.rand(int(masked.sum()), generator=generator, dtype=torch.float64)
        reveal = torch.zeros_like(masked)
        reveal[masked] = u < reveal_probability(sched.alpha(t), sched.alpha(s))
        if reveal.any():
            x = out[reveal]
            x = torch.cat([x[:, :mask_id], torch.full_like(x[:, :1], -1e6), x[:, mask_id + 1:]], -1)
            p = torch.log_softmax(x, -1).double().exp()
            e = -torch.log1p(-torch.rand(p.shape, generator=generator, dtype=torch.float64))
            z[reveal] = (p / e).argmax(-1)
    return z


def median_time(fn, repeats: int) -> float:
    """Median of `repeats` timed calls after one warm-up call (allocator, kernel selection, compilation); a single
    timed call (repeats 1: the long runs) has no warm-up."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_denoiser(model, split: bool = False):
    """The model as a denoiser whose network time (body and output layer) adds up in `spent[0]`: a plain callable
    (full logits), or split=True a `SplitDenoiser` (the output layer only where a token is drawn, as shipped)."""
    spent = [0.0]

    def timed(fn):
        def call(*a):
            start = time.perf_counter()
            out = fn(*a)
            spent[0] += time.perf_counter() - start
            return out
        return call
    if not split:
        return timed(model), spent
    d = SplitDenoiser(model)
    d.features, d.head = timed(d.features), timed(d.head)
    return d, spent


def overhead_rows(models: dict, repeats: int) -> list[dict]:
    rows = []
    for label, (model, mask_id, length) in models.items():
        for impl in ("current", "current, race", "current, full logits", "legacy"):  # shipped first: a fresh process
            f, spent = timed_denoiser(model, split=impl in ("current", "current, race"))
            gen = torch.Generator().manual_seed(0)
            if impl == "legacy":
                def run(f=f, length=length, mask_id=mask_id, gen=gen):
                    with torch.enable_grad():
                        legacy_sample(f, 32, length, 8, mask_id, gen)
            else:
                def run(f=f, length=length, mask_id=mask_id, gen=gen, draw="race" if "race" in impl else "inverse_cdf"):
                    ancestral_sample(f, 32, length, 8, mask_id, generator=gen, cache=False, draw=draw)
            run()
            totals, nets = [], []
            for _ in range(repeats):
                spent[0] = 0.0
                start = time.perf_counter()
                run()
                totals.append(time.perf_counter() - start)
                nets.append(spent[0])
            total, net = statistics.median(totals), statistics.median(nets)
            rows.append(dict(section="overhead", model=label, sampler=impl, length=length, batch=32, steps=8,
                             seconds=total, network_s=net, outside_share=1 - net / total))
    return rows


def dit_sampler(model, mask_id: int, length: int, grid_power: float, cache: bool, split: bool = True):
    """split: the output layer only where a token is drawn (`SplitDenoiser`, what `didi sample` uses); False: full
    logits at every step."""
    denoiser = SplitDenoiser(model) if split else (lambda z, s: model(z, s))

    def run(batch: int, steps: int, seed: int = 0):
        return ancestral_sample(denoiser, batch, length, steps, mask_id, cache=cache,
                                generator=torch.Generator().manual_seed(seed), grid_power=grid_power).nfe_mean
    return run


def ar_sampler(model, bos_id: int, mask_id: int, length: int):
    def run(batch: int, steps: int | None = None, seed: int = 0):
        generate(model, batch, length, bos_id=bos_id, mask_id=mask_id, generator=torch.Generator().manual_seed(seed))
        return float(length)
    return run


def timing_rows(section: str, label: str, run, batch: int, steps_list, length: int, repeats: int, **extra) -> list:
    rows = []
    for steps in steps_list:
        nfe = [0.0]

        def call(nfe=nfe, steps=steps):
            nfe[0] = run(batch, steps)
        sec = median_time(call, repeats)
        rows.append(dict(section=section, model=label, length=length, batch=batch, steps=steps if steps else length,
                         nfe=nfe[0], seconds=sec, s_per_seq=sec / batch, seq_per_s=batch / sec, **extra))
    return rows


def quality_lookup(path: Path | None):
    if path is None or not path.is_file():
        return lambda *a: None
    rows = json.loads(path.read_text())["rows"]
    table = {(r["model"], r["steps"], r.get("grid_power") or 1): r["valid_sentences"] for r in rows
             if r.get("temperature", 1) == 1 and r["sampler"] in ("ancestral", "ar+kv")}
    return lambda model, steps, power=1: table.get((model, steps, power))


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_ar: the AR row's time per sequence over this row's (> 1: faster than AR), per section, length,
    batch and mode; speedup_vs_teacher: the same against the teacher at its largest step count (its best validity)."""
    for r in rows:
        ts = [t for t in rows if t["model"] == "teacher" and t["section"] == r["section"] and t["batch"] == r["batch"]
              and t["length"] == r["length"]]
        if ts and "s_per_seq" in r:
            r["speedup_vs_teacher"] = max(ts, key=lambda t: t["steps"])["s_per_seq"] / r["s_per_seq"]
        ar = [a for a in rows if a["model"] == "ar" and a["section"] == r["section"] and a["length"] == r["length"]
              and a["batch"] == r["batch"] and a.get("mode") == r.get("mode")]
        if ar and "s_per_seq" in r:
            r["speedup_vs_ar"] = ar[0]["s_per_seq"] / r["s_per_seq"]


def crossover(rows: list[dict], section: str, length: int, batch: int) -> float | None:
    """The number of student steps at which its time per sequence equals AR's (log-linear interpolation)."""
    ar = [r for r in rows if r["section"] == section and r["model"] == "ar" and r["length"] == length
          and r["batch"] == batch]
    pts = sorted((r["steps"], r["s_per_seq"]) for r in rows if r["section"] == section and r["length"] == length
                 and r["batch"] == batch and r["model"] in ("student", "dit"))
    if not ar or not pts:
        return None
    target = ar[0]["s_per_seq"]
    if pts[0][1] > target:
        return 0.0
    for (k0, t0), (k1, t1) in zip(pts, pts[1:]):
        if t0 <= target < t1:
            w = (math.log(target) - math.log(t0)) / (math.log(t1) - math.log(t0))
            return float(math.exp(math.log(k0) + w * (math.log(k1) - math.log(k0))))
    return float("inf")  # faster than AR at every measured step count


def untrained(arch: str, length: int, vocab: int):
    cfg = preset("lang-tiny", [f"model.length={length}", f"model.vocab_size={vocab}", f"model.arch={arch}"])
    torch.manual_seed(0)
    model = (DIT(cfg.model) if arch == "dit" else CausalTransformer(cfg.model)).eval()
    if arch == "dit":  # zero-initialized output layers would give uniform logits; any non-degenerate weights do
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
    return model


def plot(rows: list[dict], length: int, long_batch: int, path: Path) -> None:
    """Seconds per sequence against steps with the AR line: batch 1 (top) and the large batch (bottom), one column
    per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [length] + sorted({r["length"] for r in rows if r["section"] == "long"})
    fig, axes = plt.subplots(2, len(lengths), figsize=(4.2 * len(lengths), 7.0), squeeze=False)
    for col, L in enumerate(lengths):
        for row, batch in enumerate((1, 64 if L == length else long_batch)):
            ax = axes[row][col]
            section = ("latency" if batch == 1 else "throughput") if L == length else "long"
            sel = [r for r in rows if r["section"] == section and r["length"] == L and r["batch"] == batch]
            for model in sorted({r["model"] for r in sel if r["model"] != "ar"}, key=lambda m: (m != "student", m)):
                pts = sorted((r["steps"], r["s_per_seq"]) for r in sel if r["model"] == model)
                ax.plot(*zip(*pts), "o-" if model in ("student", "dit") else "s--",
                        label=model if model != "dit" else "diffusion (untrained)")
            for r in sel:
                if r["model"] == "ar":
                    ax.axhline(r["s_per_seq"], color="k", ls=":", label=f"AR + KV cache ({L} tokens)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sampling steps")
            ax.set_ylabel(f"seconds per sequence, batch {batch}")
            ax.set_title(f"length {L}, batch {batch}")
            if sel:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--ar", required=True)
    ap.add_argument("--quality", type=Path, default=RESULTS / "reference.json")
    ap.add_argument("--student-label", default="didi-p3-s0", help="the student's model name in --quality rows")
    ap.add_argument("--student-steps", default="2,4,8,16,32")
    ap.add_argument("--teacher-steps", default="16,32,64,128")
    ap.add_argument("--teacher-grid-steps", default="8,16,32",
                    help="the teacher also on the student's time grid (when its power differs from the teacher's)")
    ap.add_argument("--lengths", default="512,1024")
    ap.add_argument("--long-steps", default="4,8,16")
    ap.add_argument("--long-steps-b1", default="4,8,16,32,64", help="--long-steps at batch 1 (cheap)")
    ap.add_argument("--long-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sections", default="overhead,latency,throughput,long,settings")
    ap.add_argument("--name", default="speed")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    threads = torch.get_num_threads()

    teacher, student, ar = didi.load(args.teacher), didi.load(args.student), didi.load(args.ar)
    mask_id, length = student.tokenizer.mask_id, student.config.model.length
    tok = ar.tokenizer
    bos = tok.bos_id if tok.bos_id is not None else tok.eos_id
    for p in (teacher, student, ar):
        p.model.eval()
    s_power, t_power = student.config.diffusion.grid_power, teacher.config.diffusion.grid_power
    quality = quality_lookup(args.quality)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    rows: list[dict] = []

    if "overhead" in sections:
        english = RunConfig().model  # the `tiny` preset's shape: 4 x 256, GPT-2-size BPE 8,192 + mask, length 128
        english.vocab_size, english.length = 8193, 128
        torch.manual_seed(0)
        eng = DIT(english).eval()
        for p in eng.parameters():
            torch.nn.init.normal_(p, std=0.02)
        rows += overhead_rows({"tiny (V 8193, L 128)": (eng, 8192, 128),
                               f"reference student (V {mask_id + 1}, L {length})": (student.model, mask_id, length)},
                              args.repeats)

    runners = {
        "student": (dit_sampler(student.model, mask_id, length, s_power, not student.config.model.time_conditioning),
                    ints(args.student_steps), s_power, args.student_label),
        "teacher": (dit_sampler(teacher.model, mask_id, length, t_power, not teacher.config.model.time_conditioning),
                    ints(args.teacher_steps), t_power, "teacher"),
        "ar": (ar_sampler(ar.model, bos, mask_id, length), [None], None, "ar"),
    }
    if s_power != t_power:  # the teacher on the student's grid: how much of the gain is the grid's
        runners[f"teacher p{s_power:g}"] = (
            dit_sampler(teacher.model, mask_id, length, s_power, not teacher.config.model.time_conditioning),
            ints(args.teacher_grid_steps), s_power, f"teacher p{s_power:g}")
    for section, batch in (("latency", 1), ("throughput", 64)):
        if section not in sections:
            continue
        for label, (run, steps_list, power, qname) in runners.items():
            for r in timing_rows(section, label, run, batch, steps_list, length, args.repeats, grid_power=power):
                r["valid_sentences"] = quality(qname, r["steps"] if label != "ar" else length, power or 1)
                rows.append(r)

    if "long" in sections:
        vocab = mask_id + 1
        for L in ints(args.lengths):
            dit, arm = untrained("dit", L, vocab), untrained("ar", L, vocab)
            for batch in (1, args.long_batch):
                reps = args.repeats if batch == 1 else 1
                rows += timing_rows("long", "dit", dit_sampler(dit, mask_id, L, s_power, True), batch,
                                    ints(args.long_steps_b1 if batch == 1 else args.long_steps), L, reps,
                                    grid_power=s_power)
                rows += timing_rows("long", "ar", ar_sampler(arm, bos, mask_id, L), batch, [None], L, reps)

    if "settings" in sections:
        # the samplers run under inference_mode (since 41f2571); "no_grad" runs their bodies without it
        import didi.nn.ar as ar_mod
        import didi.sampling as sampling_mod

        def no_grad_dit(model):
            def run(batch: int, steps: int):
                with torch.no_grad():
                    sampling_mod._ancestral(SplitDenoiser(model), batch, length, steps, mask_id,
                                            LogLinearSchedule(), None, 1.0, 1.0, "argmax", True, 1e-5,
                                            torch.Generator().manual_seed(0), "cpu", False, s_power, "inverse_cdf")
            return run

        def no_grad_ar(model):
            def run(batch: int, steps: int | None = None):
                with torch.no_grad():
                    ar_mod._generate.__wrapped__(model, batch, length, bos_id=bos, mask_id=mask_id, prefix=None,
                                                 temperature=1.0, top_p=1.0,
                                                 generator=torch.Generator().manual_seed(0), use_cache=True)
            return run

        import copy

        for mode in ("no_grad", "full logits", "inference_mode", "compile", "1 thread"):
            if mode == "no_grad":
                run, arun = no_grad_dit(student.model), no_grad_ar(ar.model)
            else:
                compiled = mode == "compile"
                dm, arm = student.model, ar.model
                if compiled:  # compile what the samplers call, on copies: the DiT body, AR's forward_cached
                    dm, arm = copy.deepcopy(dm), copy.deepcopy(arm)
                    dm.hidden_states = torch.compile(dm.hidden_states, dynamic=True)
                    arm.forward_cached = torch.compile(arm.forward_cached, dynamic=True)
                run = dit_sampler(dm, mask_id, length, s_power, True, split=mode != "full logits")
                arun = ar_sampler(arm, bos, mask_id, length)
            for batch in (1, 64):
                if mode == "1 thread":
                    torch.set_num_threads(1)
                for label, fn in (("student", lambda f=run, b=batch: f(b, 8)), ("ar", lambda f=arun, b=batch: f(b))):
                    start = time.perf_counter()
                    fn()  # the first call (compilation for "compile"), reported apart
                    first = time.perf_counter() - start
                    sec = median_time(fn, args.repeats)
                    rows.append(dict(section="settings", mode=mode, model=label, length=length, batch=batch,
                                     steps=8 if label == "student" else length, seconds=sec, s_per_seq=sec / batch,
                                     seq_per_s=batch / sec, first_call_s=first))
                torch.set_num_threads(threads)

    add_ratios(rows)
    cross = {f"{sec} L{L} batch {b}": crossover(rows, sec, L, b)
             for sec, L in [("latency", length)] + [("long", x) for x in ints(args.lengths)] for b in (1, 64)
             if any(r["section"] == sec and r["length"] == L and r["batch"] == b for r in rows)}
    cross.update({f"throughput L{length} batch 64": crossover(rows, "throughput", length, 64)})
    cols = ["section", "model", "sampler", "mode", "length", "batch", "steps", "grid_power", "nfe", "seconds",
            "network_s", "outside_share", "s_per_seq", "seq_per_s", "speedup_vs_ar", "speedup_vs_teacher",
            "valid_sentences", "first_call_s"]
    notes = ("speedup_vs_ar: AR's seconds per sequence over the row's, same section, length and batch (> 1: faster "
             "than AR); speedup_vs_teacher: the same against the teacher at its most steps. Crossover (student "
             "steps at which it ties AR; inf: faster at every measured count, 0: slower "
             "at every one): " + ", ".join(f"{k}: {v if v is None else round(v, 2)}" for k, v in cross.items()))
    settings = dict(vars(args), quality=str(args.quality), threads=threads, crossover=cross,
                    student_grid_power=s_power, teacher_grid_power=t_power)
    path = write_results(args.name, rows, settings, cols, notes, Path(args.out))
    plot(rows, length, args.long_batch, Path(args.out) / f"{args.name}.png")
    print(path.read_text())


if __name__ == "__main__":
    main()
