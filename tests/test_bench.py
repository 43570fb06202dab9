"""The bench scripts that the reference-language results rest on (curve.py; probes/latent_probe.py and
probes/code_use.py) run end to end on a tiny grammar and write rows that the code produced: one per snapshot and
step count, scores in range."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from didi.distill import DistillConfig, distill

BENCH = Path(__file__).resolve().parent.parent / "bench"

GRAMMAR = """
start text
sentences hello, walk, bye
let a = name
text -> hello walk bye
hello -> "Hi $a." [2] | "$a came."
walk -> "$a went to" place "." | "$a ran."
bye -> "Bye, $a!"
name -> "Ann" [3] | "Bo" | "Cy"
place -> "the park" | "town" [2]
"""


def bench(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=BENCH, capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_curve_and_latent_probe_run_on_a_latent_student(tmp_path, grammar_teacher):
    g, teacher = grammar_teacher(GRAMMAR, texts=200, length=20, steps=10)
    lat = DistillConfig(method="latent", student_noise_dim=4, max_steps=4, batch_size=4, warmup_steps=1,
                        student_lr=1e-3, ema=0.0, latent=dict(beta=0.1))
    student = tmp_path / "lat"
    distill(teacher, student, lat, overrides=["train.eval_every=0", "train.snapshot_every=2"], progress=False)
    judge = f"grammar:{g}"
    out = tmp_path / "results"
    curve = ("curve.py", str(student), "--teacher", str(teacher), "--judge", judge, "--steps", "2,4", "--num", "8",
             "--grid-power", "3", "--name", "c", "--out", str(out))

    bench(*curve)
    rows = json.loads((out / "c.json").read_text())["rows"]
    assert sorted((r["iteration"], r["steps"]) for r in rows) == [(i, s) for i in (0, 2, 4) for s in (2, 4)]
    assert all(0.0 <= r["valid_sentences"] <= 1.0 and r["grid_power"] == 3.0 for r in rows)
    assert (out / "c.md").is_file() and (out / "c.png").is_file()
    cached = (student / "curve.rows.jsonl").read_text().splitlines()
    bench(*curve)
    assert (student / "curve.rows.jsonl").read_text().splitlines() == cached  # nothing sampled twice

    bench("probes/latent_probe.py", str(student), "--judge", judge, "--steps", "2", "--num", "8", "--mog", "3",
          "--name", "p", "--out", str(out))
    result = json.loads((out / "p.json").read_text())
    rows = result["rows"]
    assert [r["xi"] for r in rows] == ["data (held-out)", "prior", "posterior", "zero", "fitted", "aggregate", "mog-3"]
    assert result["settings"]["mog_components"] == 3 and result["settings"]["train_texts"] > 8
    assert all(0.0 <= r["in_train"] <= 1.0 for r in rows)
    aggregate = [r for r in rows if r["xi"] == "aggregate"]
    assert aggregate and all(0.0 <= r["source_similarity"] <= 1.0 for r in aggregate)
    assert 0.0 < result["settings"]["random_pair_similarity"] <= 1.0
    assert rows[0]["valid_sentences"] == 1.0  # the held-out texts are the grammar's own
    assert all(0.0 <= r["valid_sentences"] <= 1.0 for r in rows)

    r = bench("probes/latent_probe.py", str(teacher), "--judge", judge, ok=False)
    assert r.returncode != 0 and "is not a latent student" in r.stderr

    bench("probes/code_use.py", str(student), "--teacher", str(teacher), "--num", "8", "--name", "u", "--out", str(out))
    rows = json.loads((out / "u.json").read_text())["rows"]
    assert [r["t"] for r in rows] == [0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.97, 1.0]
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] >= 0 for k in ("teacher", "posterior", "prior_draw"))
        assert math.isclose(r["read_from_code"], r["teacher"] - r["posterior"])
    assert rows[-1]["teacher"] > rows[0]["teacher"]  # with every token masked the teacher knows least
    r = bench("probes/code_use.py", str(teacher), "--teacher", str(teacher), ok=False)
    assert r.returncode != 0 and "is not a latent student" in r.stderr


def test_latent_probe_similarity_scores_word_order():
    sys.path.insert(0, str(BENCH / "probes"))
    try:
        from latent_probe import similarity
    finally:
        sys.path.remove(str(BENCH / "probes"))
    assert similarity(["the cat ran", "a b"], ["the cat ran", "c d"]) == 0.5  # identical 1, disjoint 0
    assert similarity(["the cat ran away"], ["the dog ran away"]) == 0.75  # 2 * 3 matching words / 8


def test_novelty_finds_each_texts_nearest_training_text_and_counts_copies():
    sys.path.insert(0, str(BENCH / "probes"))
    try:
        from novelty import Nearest, score
    finally:
        sys.path.remove(str(BENCH / "probes"))
    train = ["the cat sat on the mat today", "a dog ran to the park at noon", "one bird flew over the old barn"]
    nearest = Nearest(train, candidates=2)
    assert nearest.similarity("a dog ran to the park at noon") == 1.0
    assert nearest.similarity("the cat sat on the rug today") == 12 / 14  # 6 of 7 words match the first text
    assert nearest.similarity("nothing here shares three words") == 0.0  # no candidate: no shared 3-gram
    got = score(["a dog ran to the park at noon", "the cat sat on the rug today"], set(train), nearest, num=2)
    assert got["exact_copy"] == 0.5 and got["near_copy"] == 0.5 and got["num"] == 2
    assert got["nearest_similarity"] == (1.0 + 12 / 14) / 2


def test_bar_computes_the_gap_closed_and_the_issue_condition_from_eval_files(tmp_path):
    def row(model, steps, v, ce, grid=1.0, run=None):
        return {"model": model, "run": run or f"runs/{model}", "steps": steps, "valid_sentences": v,
                "choice_entropy_ratio": ce, "grid_power": grid, "sampler": "ancestral", "temperature": 1.0, "num": 64}

    teacher = [row("teacher", 4, 0.2, 0.99), row("teacher", 8, 0.4, 1.0), row("teacher", 128, 0.7, 1.0),
               row("teacher", 256, 0.8, 1.0), row("teacher", 4, 0.45, 1.0, 3.0), row("teacher", 8, 0.6, 1.0, 3.0),
               row("teacher", 256, 0.85, 1.0, 3.0)]
    students = [row("a", 4, 0.7, 0.96), row("a", 8, 0.7, 0.97), row("b", 4, 0.75, 0.9), row("b", 8, 0.8, 0.99),
                row("a", 4, 0.8, 0.97, 3.0), row("a", 8, 0.85, 0.97, 3.0), row("c", 2, 0.5, 1.0),
                # another seed in a directory of the same name: a run of its own, failing on the gap share alone
                row("a", 4, 0.5, 1.0, run="runs/s1/a"), row("a", 8, 0.7, 1.0, run="runs/s1/a")]
    (tmp_path / "t.json").write_text(json.dumps({"rows": teacher}))
    (tmp_path / "s.json").write_text(json.dumps({"rows": students}))
    r = bench("bar.py", "--teacher", str(tmp_path / "t.json"), "--students", str(tmp_path / "s.json"), "--name",
              "bar", "--out", str(tmp_path))
    assert "no teacher row on the grid and step count of: c at grid 1, 2 steps" in r.stderr
    got = json.loads((tmp_path / "bar.json").read_text())
    rows = {(r["run"], r["grid_power"], r["steps"]): r for r in got["rows"]}
    assert len(rows) == len(got["rows"]) == 8
    a, a1 = "runs/a", "runs/s1/a"
    assert math.isclose(rows[a, 1.0, 4]["gap_closed"], 0.5 / 0.6) and rows[a, 1.0, 4]["passes"]
    assert math.isclose(rows[a, 1.0, 8]["gap_closed"], 0.75) and rows[a, 1.0, 8]["passes"]
    assert math.isclose(rows["runs/b", 1.0, 4]["diversity_vs_teacher_best"], 0.9)
    assert not rows["runs/b", 1.0, 4]["passes"] and rows["runs/b", 1.0, 8]["passes"]
    assert math.isclose(rows[a1, 1.0, 4]["gap_closed"], 0.5) and not rows[a1, 1.0, 4]["passes"]
    assert rows[a1, 1.0, 8]["passes"]
    assert math.isclose(rows[a, 3.0, 4]["gap_closed"], 0.35 / 0.4) and rows[a, 3.0, 4]["teacher_best"] == 0.85
    grids = got["settings"]["grids"]
    assert grids["1.0"]["condition"] is True and grids["3.0"]["condition"] is False
    md = (tmp_path / "bar.md").read_text()
    assert "grid power 1: " in md and "(below half) holds; runs passing at 4 and 8 steps: 1 of 3 (runs/a)" in md
    assert "grid power 3: " in md and "(below half) FAILS; runs passing at 4 and 8 steps: 1 of 1 (runs/a)" in md
    (tmp_path / "t2.json").write_text(json.dumps({"rows": teacher + [row("teacher", 8, 0.4, 1.0, run="runs/x")]}))
    r = bench("bar.py", "--teacher", str(tmp_path / "t2.json"), "--students", str(tmp_path / "s.json"), "--out",
              str(tmp_path), ok=False)
    assert r.returncode != 0 and "more than one run" in r.stderr
    r = bench("bar.py", "--teacher", str(tmp_path / "missing.json"), "--students", str(tmp_path / "s.json"), "--out",
              str(tmp_path), ok=False)
    assert r.returncode != 0 and "no result file" in r.stderr and "Traceback" not in r.stderr


def test_reference_refuses_a_bad_finished_stage_in_one_line(tmp_path):
    """`bench/reference.py --stage NAME=RUN` uses finished runs as stages, `--until NAME=STEP` stops a stage early; a
    malformed item or a folder that is not a run stops it with one line before anything is built."""
    for flag, item, message in (("--stage", "sdtt", "--stage wants NAME=RUN"),
                                ("--stage", f"sdtt={tmp_path}", "not a finished run directory"),
                                ("--until", "dmmd-s0=soon", "--until wants NAME=STEP"),
                                ("--until", "dmmd-s0=0", "--until wants NAME=STEP")):
        r = bench("reference.py", "--work", str(tmp_path / "w"), flag, item, ok=False)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "w").exists()


def test_gpu_script_runs_at_the_test_shape_on_a_cpu(tmp_path):
    """bench/gpu.py is meant for a CUDA machine; on a CPU the same code runs at the `test` shape, so a GPU session
    finds it working. Every row is a measured time: positive, and the ratios follow from the times."""
    bench("gpu.py", "--no-compile", "--reps", "2", "--sample-batches", "1,4", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "gpu_cpu.json").read_text())["rows"]
    assert [r["what"].split(",")[0].split(" (")[0] for r in rows] == [
        "MDLM training step", "DiDi-Instruct iteration", "DiT", "DiT", "AR + KV cache", "DiT", "DiT", "AR + KV cache"]
    assert all(r["seconds"] > 0 for r in rows)
    assert rows[0]["tokens_per_s"] > 0 and rows[0]["mfu"] is None  # no peak to divide by on a CPU
    assert rows[1]["hours_per_10k"] == rows[1]["seconds"] * 10_000 / 3600
    ar = {r["batch"]: r["seconds"] for r in rows if r["what"].startswith("AR")}
    assert all(math.isclose(r["speedup_vs_ar"], ar[r["batch"]] / r["seconds"]) for r in rows[2:])


def test_curve_training_metrics_fill_every_sampled_snapshot(tmp_path, monkeypatch):
    """With every other snapshot sampled (--every 2: iterations 20, 60 of snapshots 20, 40, 60), each sampled
    iteration gets the mean over the logged steps since the previous sampled one, not windows of a fixed width
    that miss them."""
    monkeypatch.syspath_prepend(str(BENCH))
    import curve

    rows = [{"step": s, "loss": float(s), "disc_acc": s / 100} for s in (10, 20, 30, 40, 50, 60, 70)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = curve.training_metrics(tmp_path, [20, 60])
    assert sorted(out) == [20, 60]
    assert out[20]["loss"] == 15.0 and math.isclose(out[60]["disc_acc"], 0.45)
