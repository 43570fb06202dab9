"""Diagnostic: can a discriminator separate held-out data from the teacher's few-step samples?

Trains DiDi-Instruct discriminators offline on a fixed set (data = real, teacher S-step samples = fake),
masked with alpha_tau exactly as in distillation, and reports held-out accuracy per token and per
sequence (the sign of the mean logit over masked positions = the reward's sign), next to two cheap
baselines on the unmasked sequences: a unigram naive-Bayes classifier and the teacher's NELBO.

Usage:
  python bench/disc_probe.py --teacher runs/en-teacher --work runs/disc-probe \
      --variants "default;lr=1e-3;blocks=4,lr=1e-3;head=linear,lr=1e-3" --steps 300
A variant is comma-separated key=value: lr, blocks (trainable), head (sn|linear), tau_max, batch, smoothing, time (0|1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
from common import write_results
from teacher_nelbo_probe import nelbo_per_row

from didi import runs
from didi.data import prepare_data
from didi.diffusion import LogLinearSchedule, mask_tokens
from didi.methods.didi_instruct import discriminator_loss
from didi.nn.discriminator import Discriminator
from didi.sampling import ancestral_sample

DEFAULT = {"lr": 1e-4, "blocks": 2, "head": "sn", "tau_min": 0.02, "tau_max": 0.98, "batch": 32,
           "smoothing": 0.1, "time": 1}


def parse_variant(text: str) -> dict:
    v = dict(DEFAULT)
    for part in filter(None, text.split(",")):
        if part == "default":
            continue
        key, _, val = part.partition("=")
        if key not in v:
            raise SystemExit(f"error: unknown variant key {key!r} (known: {', '.join(v)})")
        v[key] = type(DEFAULT[key])(float(val)) if key != "head" else val
    return v


def sets(args, run):
    """(real, fake) token sets, cached in --work."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"sets.n{args.num}.s{args.fake_steps}.pt"
    if path.exists():
        return torch.load(path)
    L, mask = run.config.model.length, run.tokenizer.mask_id
    _, valid = prepare_data(run.config.data, run.tokenizer, L, show_progress=False)
    real = valid.get(torch.arange(min(args.num, len(valid))))
    fake = []
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in range(0, args.num, 64):
            n = min(64, args.num - i)
            fake.append(ancestral_sample(lambda z, s: run.model(z, s), n, L, args.fake_steps, mask, generator=g).tokens)
    out = {"real": real, "fake": torch.cat(fake)}
    torch.save(out, path)
    return out


def naive_bayes(tr_r, tr_f, te_r, te_f, vocab):
    def counts(x):
        return torch.bincount(x.flatten(), minlength=vocab).double() + 1.0
    lr = (counts(tr_r) / counts(tr_r).sum()).log() - (counts(tr_f) / counts(tr_f).sum()).log()
    score = lambda x: lr[x].sum(1)  # noqa: E731
    return float(((score(te_r) > 0).sum() + (score(te_f) < 0).sum()) / (len(te_r) + len(te_f)))


def train_disc(run, v, tr_r, tr_f, te_r, te_f, steps, seed):
    torch.manual_seed(seed)
    disc = Discriminator.from_teacher(run.model, v["blocks"], bool(v["time"]))
    if v["head"] == "linear":
        hdim = run.config.model.hidden_dim
        disc.output_layer.main = nn.Sequential(nn.Linear(hdim, hdim), nn.SiLU(), nn.Linear(hdim, 1))
    params = [p for p in disc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=v["lr"], weight_decay=0.0)
    sched, mask = LogLinearSchedule(run.config.diffusion.eps), run.tokenizer.mask_id
    g = torch.Generator().manual_seed(seed)
    b = int(v["batch"]) // 2

    def noised(x, tau, gen):
        return mask_tokens(x, sched.alpha(tau), mask, torch.rand(x.shape, generator=gen))

    def draw_tau(n, gen):
        return v["tau_min"] + (v["tau_max"] - v["tau_min"]) * torch.rand(n, generator=gen)

    curve = []
    disc.train()
    for step in range(1, steps + 1):
        ir = torch.randint(0, len(tr_r), (b,), generator=g)
        jf = torch.randint(0, len(tr_f), (b,), generator=g)
        tau = draw_tau(b, g)  # coupled: the same tau for a real and a fake row
        zr, zf = noised(tr_r[ir], tau, g), noised(tr_f[jf], tau, g)
        logits = disc(torch.cat([zr, zf]), sched.sigma(torch.cat([tau, tau]))).float()
        loss = discriminator_loss(logits[:b], logits[b:], zr == mask, zf == mask, v["smoothing"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0 or step == steps:
            curve.append((step, round(loss.item(), 4)))
    disc.eval()
    res = {"curve": curve}
    gt = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for tau_v in (0.1, 0.5, 0.9):
            tau_r = torch.full((len(te_r),), tau_v)
            tau_f = torch.full((len(te_f),), tau_v)
            zr, zf = noised(te_r, tau_r, gt), noised(te_f, tau_f, gt)
            lr_ = disc(zr, sched.sigma(tau_r)).float()
            lf = disc(zf, sched.sigma(tau_f)).float()
            mr, mf = zr == mask, zf == mask
            tok = float(((lr_ > 0) & mr).sum() + ((lf < 0) & mf).sum()) / float(mr.sum() + mf.sum())
            sr = (lr_ * mr).sum(1) / mr.sum(1).clamp_min(1)
            sf = (lf * mf).sum(1) / mf.sum(1).clamp_min(1)
            seq = float((sr > 0).sum() + (sf < 0).sum()) / (len(sr) + len(sf))
            res[f"tau{tau_v}"] = {"token_acc": round(tok, 4), "seq_acc": round(seq, 4),
                                  "reward_gap": round(float(sr.mean() - sf.mean()), 4)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--num", type=int, default=768, help="sequences per side (a quarter is held out)")
    ap.add_argument("--fake-steps", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300, help="discriminator updates per variant")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="disc_probe", help="results file name under bench/results")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from WORK/probe.json")
    args = ap.parse_args()
    if args.report_only:
        report(json.loads((Path(args.work) / "probe.json").read_text()), args.name)
        return
    run = runs.load_run(args.teacher, "cpu")
    run.model.eval().requires_grad_(False)
    s = sets(args, run)
    n_te = len(s["real"]) // 4
    tr_r, te_r, tr_f, te_f = s["real"][n_te:], s["real"][:n_te], s["fake"][n_te:], s["fake"][:n_te]
    out = {"teacher": args.teacher, "fake_steps": args.fake_steps, "num": args.num, "steps": args.steps}
    out["naive_bayes_seq_acc"] = naive_bayes(tr_r, tr_f, te_r, te_f, run.tokenizer.vocab_size + 1)
    sched, mask = LogLinearSchedule(run.config.diffusion.eps), run.tokenizer.mask_id
    nr = nelbo_per_row(run.model, te_r, sched, mask, run.config.diffusion.eps)
    nf = nelbo_per_row(run.model, te_f, sched, mask, run.config.diffusion.eps)
    thr = float(torch.cat([nr, nf]).median())
    out["nelbo_seq_acc"] = float(((nr < thr).sum() + (nf >= thr).sum()) / (len(nr) + len(nf)))
    out["nelbo_means"] = [float(nr.mean()), float(nf.mean())]
    print(json.dumps({k: out[k] for k in ("naive_bayes_seq_acc", "nelbo_seq_acc", "nelbo_means")}), flush=True)
    out["variants"] = {}
    for text in args.variants.split(";"):
        v = parse_variant(text)
        t0 = time.time()
        res = train_disc(run, v, tr_r, tr_f, te_r, te_f, args.steps, args.seed)
        res["seconds"] = round(time.time() - t0, 1)
        out["variants"][text] = {"config": v, **res}
        print(text, json.dumps({k: res[k] for k in res if k != "curve"}), "loss", res["curve"][-1][1], flush=True)
        (Path(args.work) / "probe.json").write_text(json.dumps(out, indent=1))
    report(out, args.name)


def report(out: dict, name: str) -> None:
    """bench/results/NAME.{json,md}: one row per classifier, held-out accuracy (sequence level = reward sign)."""
    rows = [{"classifier": "unigram naive Bayes (unmasked)", "seq_acc unmasked": out["naive_bayes_seq_acc"]},
            {"classifier": "teacher NELBO, median threshold (unmasked)", "seq_acc unmasked": out["nelbo_seq_acc"]}]
    for text, r in out["variants"].items():
        row = {"classifier": f"discriminator {text}", "batch": r["config"]["batch"], "final_loss": r["curve"][-1][1],
               "seconds": r["seconds"]}
        for tau in ("0.1", "0.5", "0.9"):
            row[f"tok_acc@tau{tau}"] = r[f"tau{tau}"]["token_acc"]
            row[f"seq_acc@tau{tau}"] = r[f"tau{tau}"]["seq_acc"]
            row[f"gap@tau{tau}"] = r[f"tau{tau}"]["reward_gap"]
        rows.append(row)
    cols = ["classifier", "seq_acc unmasked", "seq_acc@tau0.1", "seq_acc@tau0.5", "seq_acc@tau0.9", "tok_acc@tau0.5",
            "gap@tau0.1", "gap@tau0.5", "gap@tau0.9", "batch", "final_loss", "seconds"]
    settings = {k: out[k] for k in ("teacher", "fake_steps", "num", "steps")}
    write_results(name, rows, settings, cols, notes=(
        f"Real = held-out data, fake = teacher {out['fake_steps']}-step samples, {out['num']} per side (a quarter "
        f"held out); {out['steps']} discriminator updates per variant (batch = real + fake rows). "
        "seq_acc = sign of the mean logit over masked positions (the reward's sign); "
        "gap = mean reward on real minus on fake rows. Chance = 0.5."))


if __name__ == "__main__":
    main()
