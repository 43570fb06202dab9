"""A user's mistakes and damaged files through the CLI: every case exits non-zero with one line on stderr, no
traceback, and changes no file that existed before."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import didi
from didi.cli import main
from didi.config import preset
from didi.distill import distill, distill_preset
from didi.language import Grammar, write_corpus


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("errs")
    corpus = write_corpus(Grammar.load("stories"), 200, 0, root / "corpus.jsonl")
    cfg = preset("test", [f"data.source={corpus}", "data.layout=rows", f"data.cache_dir={root / 'cache'}",
                          "data.long_sequences=crop",
                          "model.length=48", "train.max_steps=4", "train.eval_every=0", "train.save_every=2"])
    didi.train(cfg, root / "teacher", progress=False)
    distill(root / "teacher", root / "student", distill_preset("tiny", ["max_steps=2", "batch_size=2", "didi.group=2",
                                                                        "didi.disc_only_steps=1"]),
            overrides=["train.eval_every=0"], progress=False)
    return root


def snapshot(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def copy_run(runs: Path, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(runs / name, dst)
    return dst


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    return e.value.code, err


# (id, how to damage a copy of a run (or None), argv with {teacher} / {student} / {tmp} placeholders)
CASES = [
    ("temperature<0", None, ["sample", "{teacher}", "--temperature", "-1"]),
    ("top_p>1", None, ["sample", "{teacher}", "--top-p", "1.5"]),
    ("top_p=0", None, ["sample", "{teacher}", "--top-p", "0"]),
    ("num=0", None, ["sample", "{teacher}", "--num", "0"]),
    ("batch_size=0", None, ["sample", "{teacher}", "--batch-size", "0"]),
    ("steps=0", None, ["sample", "{teacher}", "--steps", "0"]),
    ("steps=abc", None, ["sample", "{teacher}", "--steps", "abc"]),
    ("rho>1", None, ["sample", "{teacher}", "--rho", "2"]),
    ("candidates=0", None, ["sample", "{teacher}", "--candidates", "0"]),
    ("grid_power=0", None, ["sample", "{teacher}", "--grid-power", "0"]),
    ("temperature=nan", None, ["sample", "{teacher}", "--temperature", "nan"]),
    ("train batch 0", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--batch-size", "0"]),
    ("train lr<0", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--set", "train.lr=-1"]),
    ("heads", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--preset", "test", "--set",
                     "model.n_heads=3"]),
    ("ema>1", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--set", "train.ema=1.5"]),
    ("layout", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--set", "data.layout=wrap"]),
    ("dropout=1", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--set", "model.dropout=1"]),
    ("unknown key", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--set", "train.lrr=1"]),
    ("bad value type", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--set", "train.max_steps=many"]),
    ("existing run", None, ["train", "--data", "{corpus}", "--out", "{teacher}"]),
    ("eval num 0", None, ["eval", "{teacher}", "--num", "0", "--judge", "grammar:stories"]),
    ("eval steps list", None, ["eval", "{teacher}", "--steps", "4,x", "--judge", "grammar:stories"]),
    ("wrong domain", None, ["eval", "{teacher}", "--steps", "2", "--domain", "protein"]),
    ("distill group 0", None, ["distill", "--teacher", "{teacher}", "--out", "{tmp}/d", "--group", "0"]),
    ("distill smoothing", None, ["distill", "--teacher", "{teacher}", "--out", "{tmp}/d", "--set",
                                 "distill.didi.label_smoothing=0.7"]),
    ("distill flat key", None, ["distill", "--teacher", "{teacher}", "--out", "{tmp}/d", "--set", "distill.kl_beta=1"]),
    ("distill other method's section", None, ["distill", "--method", "dmmd", "--teacher", "{teacher}", "--out",
                                              "{tmp}/d", "--group", "8"]),
    ("sample out where no file can be made", None, ["sample", "{teacher}", "--steps", "2", "--out", "/proc/x.jsonl"]),
    ("distill student lr", None, ["distill", "--teacher", "{teacher}", "--out", "{tmp}/d", "--student-lr", "-1"]),
    ("distill group 1", None, ["distill", "--teacher", "{teacher}", "--out", "{tmp}/d", "--group", "1"]),
    ("distill model.hidden_dim", None, ["distill", "--teacher", "{teacher}", "--out", "{tmp}/d", "--set",
                                        "model.hidden_dim=64"]),
    ("distill model.length", None, ["distill", "--teacher", "{teacher}", "--out", "{tmp}/d", "--set",
                                    "model.length=64"]),
    ("dmmd bad states", None, ["distill", "--method", "dmmd", "--teacher", "{teacher}", "--out", "{tmp}/d", "--set",
                               "distill.dmmd.states=teacher"]),
    ("dmmd aux_updates 0", None, ["distill", "--method", "dmmd", "--teacher", "{teacher}", "--out", "{tmp}/d",
                                  "--set", "distill.dmmd.aux_updates=0"]),
    ("dmmd unknown key", None, ["distill", "--method", "dmmd", "--teacher", "{teacher}", "--out", "{tmp}/d",
                                "--set", "distill.dmmd.ratio=2"]),
    ("language num 0", None, ["language", "write", "stories", "--num", "0", "--out", "{tmp}/c.jsonl"]),
    ("sample on cuda without CUDA", None, ["sample", "{teacher}", "--device", "cuda:0" if not torch.cuda.is_available()
                                           else "cuda:99"]),
    ("sample on an unknown device", None, ["sample", "{teacher}", "--device", "tpu"]),
    ("train on an unknown device", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--device", "tpu"]),
    ("sample over a file", None, ["sample", "{teacher}", "--num", "1", "--steps", "1", "--out", "{corpus}"]),
    ("resume no run", None, ["train", "--out", "{tmp}", "--resume"]),
    ("out under a file", None, ["sample", "{teacher}", "--num", "1", "--steps", "1", "--out", "{corpus}/x.jsonl"]),
    # damaged files
    ("weights truncated", ("teacher", lambda r: truncate(r / "model.safetensors")), ["sample", "{run}"]),
    ("teacher weights truncated", ("teacher", lambda r: truncate(r / "model.safetensors")),
     ["distill", "--teacher", "{run}", "--out", "{tmp}/d"]),
    ("config not json", ("teacher", lambda r: (r / "config.json").write_text("{not json")), ["sample", "{run}"]),
    ("config a list", ("teacher", lambda r: (r / "config.json").write_text("[1, 2]")), ["sample", "{run}"]),
    ("config wrong shape", ("teacher", lambda r: (r / "config.json").write_text('{"model": 3}')), ["sample", "{run}"]),
    ("tokenizer damaged", ("teacher", lambda r: (r / "tokenizer" / "tokenizer.json").write_text("garbage")),
     ["sample", "{run}"]),
    ("tokenizer meta damaged", ("teacher", lambda r: (r / "tokenizer" / "didi_tokenizer.json").write_text("{")),
     ["sample", "{run}"]),
    ("checkpoint truncated, no previous", ("teacher", lambda r: (truncate(r / "checkpoint.pt"),
                                                                 (r / "checkpoint.prev.pt").unlink())),
     ["train", "--out", "{run}", "--resume", "--steps", "8"]),
    ("both checkpoints truncated", ("teacher", lambda r: (truncate(r / "checkpoint.pt"),
                                                          truncate(r / "checkpoint.prev.pt"))),
     ["train", "--out", "{run}", "--resume", "--steps", "8"]),
    ("discriminator truncated", ("student", lambda r: truncate(r / "discriminator.safetensors")),
     ["sample", "{run}", "--guided", "--steps", "2", "--num", "1"]),
    ("guided sampling of a teacher (no discriminator)", None, ["sample", "{teacher}", "--guided", "--steps", "2"]),
    ("resume with another model", ("teacher", lambda r: None),
     ["train", "--out", "{run}", "--resume", "--set", "model.hidden_dim=64"]),
    ("resume with another tokenizer", ("teacher", lambda r: None),
     ["train", "--out", "{run}", "--resume", "--tokenizer", "gpt2"]),
    # config.json read strictly: types, NaN, unknown keys and sections
    ("config int as a string", ("teacher", lambda r: edit_config(r, "model", "hidden_dim", "256")),
     ["sample", "{run}"]),
    ("config int as null", ("teacher", lambda r: edit_config(r, "train", "max_steps", None)), ["sample", "{run}"]),
    ("config int as a float", ("teacher", lambda r: edit_config(r, "model", "n_blocks", 2.5)), ["sample", "{run}"]),
    ("config bool as a string", ("teacher", lambda r: edit_config(r, "model", "time_conditioning", "no")),
     ["sample", "{run}"]),
    ("config float NaN", ("teacher", lambda r: edit_config(r, "diffusion", "eps", float("nan"))), ["sample", "{run}"]),
    ("config unknown key", ("teacher", lambda r: edit_config(r, "model", "hidden_size", 64)), ["sample", "{run}"]),
    ("config unknown section", ("teacher", lambda r: edit_config(r, None, "optimizer", {})), ["sample", "{run}"]),
    ("config preset a number", ("teacher", lambda r: edit_config(r, None, "preset", 5)), ["sample", "{run}"]),
    ("config betas of three", ("teacher", lambda r: edit_config(r, "train", "betas", [0.9, 0.99, 0.999])),
     ["train", "--out", "{run}", "--resume", "--steps", "8"]),
    ("student distill section damaged", ("student", lambda r: edit_config(r, "distill", "group", "four")),
     ["distill", "--out", "{run}", "--resume"]),
    ("student distill unknown key", ("student", lambda r: edit_config(r, "distill", "groups", 4)),
     ["distill", "--out", "{run}", "--resume"]),
    # the other files of a run
    ("weights of another shape", ("teacher", lambda r: edit_config(r, "model", "hidden_dim", 48)),
     ["sample", "{run}"]),
    ("teacher weights of another shape", ("teacher", lambda r: edit_config(r, "model", "hidden_dim", 48)),
     ["distill", "--teacher", "{run}", "--out", "{tmp}/d"]),
    ("no tokenizer directory", ("teacher", lambda r: shutil.rmtree(r / "tokenizer")), ["sample", "{run}"]),
    ("no weights yet", ("teacher", lambda r: (r / "model.safetensors").unlink()),
     ["eval", "{run}", "--steps", "2", "--judge", "grammar:stories"]),
    # data files
    ("jsonl text a number", ("teacher", lambda r: (r / "bad.jsonl").write_text('{"text": 5}\n')),
     ["train", "--data", "{run}/bad.jsonl", "--out", "{tmp}/t", "--preset", "test"]),
    ("jsonl text NaN", ("teacher", lambda r: (r / "bad.jsonl").write_text('{"text": "a b"}\n{"text": NaN}\n')),
     ["train", "--data", "{run}/bad.jsonl", "--out", "{tmp}/t", "--preset", "test"]),
    ("jsonl text null in distill data", ("teacher", lambda r: (r / "bad.jsonl").write_text('{"text": null}\n')),
     ["distill", "--teacher", "{run}", "--data", "{run}/bad.jsonl", "--out", "{tmp}/d"]),
    ("scored texts not strings", ("teacher", lambda r: (r / "bad.jsonl").write_text('{"text": [1, 2]}\n')),
     ["language", "score", "stories", "{run}/bad.jsonl"]),
    ("empty text file", ("teacher", lambda r: (r / "empty.txt").write_text("")),
     ["train", "--data", "{run}/empty.txt", "--out", "{tmp}/t", "--preset", "test"]),
    ("data file missing", None, ["train", "--data", "{tmp}/missing.jsonl", "--out", "{tmp}/t", "--preset", "test"]),
    ("documents longer than a row", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--preset", "test",
                                           "--set", "data.layout=rows", "--set", "model.length=8", "--quiet"]),
    ("long_sequences unknown", None, ["train", "--data", "{corpus}", "--out", "{tmp}/t", "--preset", "test",
                                      "--set", "data.long_sequences=wrap"]),
    # outputs and the recipe
    ("sample out is a directory", None, ["sample", "{teacher}", "--num", "1", "--steps", "1", "--out", "{tmp}"]),
    ("sample batch larger than allowed", None, ["sample", "{teacher}", "--batch-size", "-3"]),
    ("recipe without a teacher", None, ["recipe", "--out", "{tmp}/r"]),
    ("recipe teacher missing", None, ["recipe", "--teacher", "{tmp}/none", "--out", "{tmp}/r"]),
    ("recipe unknown stage", None, ["recipe", "--teacher", "{teacher}", "--out", "{tmp}/r", "--stage", "sdtt"]),
    ("recipe minutes 0", None, ["recipe", "--teacher", "{teacher}", "--out", "{tmp}/r", "--minutes", "0"]),
    ("recipe model override", None, ["recipe", "--teacher", "{teacher}", "--out", "{tmp}/r", "--set",
                                     "model.hidden_dim=64"]),
]


def edit_config(run: Path, section: str | None, key: str, value) -> None:
    """Set one value of a run's config.json (section None: the top level), as a damaged or hand-edited file."""
    d = json.loads((run / "config.json").read_text())
    (d[section] if section else d)[key] = value
    (run / "config.json").write_text(json.dumps(d))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, runs, tmp_path, capsys):
    _, damage, argv = case
    run = None
    if damage is not None:
        name, fn = damage
        run = copy_run(runs, name, tmp_path)
        fn(run)
    before = snapshot(runs) | (snapshot(run) if run is not None else {})
    subs = {"{teacher}": str(runs / "teacher"), "{student}": str(runs / "student"), "{tmp}": str(tmp_path),
            "{corpus}": str(runs / "corpus.jsonl"), "{run}": str(run)}
    argv = [subs.get(a, a) for a in argv]
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{corpus}", str(runs / "corpus.jsonl")).replace("{run}", str(run))
            for a in argv]
    code, err = run_cli(argv, capsys)
    assert code not in (0, None), err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("didi: distilling")]
    assert len(lines) == 1 and lines[0].startswith("didi: error:"), err
    assert "Traceback" not in err
    after = snapshot(runs) | (snapshot(run) if run is not None else {})
    assert {p: h for p, h in after.items() if p in before} == before


def test_full_disk_is_one_line(runs, tmp_path, capsys, monkeypatch):
    import errno

    import didi.fileio as fileio

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(fileio, "atomic_write", full)
    code, err = run_cli(["sample", runs / "teacher", "--num", "1", "--steps", "1", "--out", tmp_path / "s.jsonl"],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "s.jsonl" in err
    assert not (tmp_path / "s.jsonl").exists()


def test_resume_from_a_damaged_latest_checkpoint_uses_the_previous_one_exactly(runs, tmp_path, capsys):
    """Two checkpoints are kept; with the latest damaged, --resume continues from the one before on the same
    trajectory as a run that never stopped."""
    cfg = json.loads((runs / "teacher" / "config.json").read_text())
    src = cfg["data"]["source"]
    common = ["--data", src, "--preset", "test", "--set", "data.layout=rows", "--set", "model.length=48",
              "--set", "data.long_sequences=crop",
              "--set", f"data.cache_dir={cfg['data']['cache_dir']}", "--set", "train.eval_every=0",
              "--set", "train.save_every=2", "--steps", "6", "--quiet"]
    main(["train", "--out", str(tmp_path / "full"), *common])
    from didi.api import train as api_train
    from didi.config import RunConfig

    partial = tmp_path / "partial"
    rcfg = RunConfig.load(tmp_path / "full" / "config.json")
    api_train(rcfg, partial, until_step=4, progress=False)  # checkpoints at steps 2 and 4
    assert (partial / "checkpoint.pt").is_file() and (partial / "checkpoint.prev.pt").is_file()
    truncate(partial / "checkpoint.pt")
    capsys.readouterr()
    main(["train", "--out", str(partial), "--resume", "--quiet"])
    out = capsys.readouterr().out
    assert "checkpoint.prev.pt" in out and "at step 2" in out
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(partial / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (partial / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [5, 6]  # the step-5 row logged before the damage was dropped on resume, then logged again once


def test_a_damaged_metrics_row_is_reported_and_kept_aside_not_dropped(tmp_path):
    """On resume, rows after the checkpoint and a last line cut short by a crash go (they are logged again); a
    damaged line elsewhere is moved to metrics.damaged.jsonl and named, and the readers say what they left out."""
    from didi.fileio import read_metrics, truncate_metrics

    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": i, "loss": 1.0 / i}) for i in (1, 2, 3)]
    path.write_text("\n".join([good[0], "{not json", good[1], "[1, 2]", good[2], '{"step": 4, "lo']) + "\n")
    rows, damaged = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3] and damaged == [2, 4, 6]
    note = truncate_metrics(path, 2)
    assert note == "metrics.jsonl: lines 2, 4 damaged (not a JSON row); moved to metrics.damaged.jsonl"
    assert path.read_text().splitlines() == good[:2]
    assert (tmp_path / "metrics.damaged.jsonl").read_text().splitlines() == ["{not json", "[1, 2]"]
    path.write_text("\n".join(good + ['{"step": 4, "lo']) + "\n")  # only a crash's cut: nothing to report
    assert truncate_metrics(path, 3) is None and path.read_text().splitlines() == good
    assert truncate_metrics(path, 3) is None and truncate_metrics(tmp_path / "none.jsonl", 1) is None


def test_a_failed_start_leaves_nothing_that_blocks_the_same_command(runs, tmp_path, capsys):
    """A start that fails after its first checks (here: too little data to fill one row) leaves nothing in --out (the
    directory it made is gone; what a directory held before stays), so the same command runs once the cause is
    mended; for train and for distill."""
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"text": "one"}) + "\n")
    out = tmp_path / "t"
    argv = ["train", "--preset", "test", "--data", small, "--out", out, "--steps", "2", "--set", "model.length=48",
            "--set", "data.layout=packed", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--quiet"]
    code, err = run_cli(argv, capsys)
    assert code != 0 and "not enough data" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # not even the tokenizer it trained
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_cli(argv, capsys)[0] != 0 and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    shutil.copy(runs / "corpus.jsonl", small)
    main([str(a) for a in argv])
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    student = tmp_path / "s"
    argv = ["distill", "--teacher", runs / "teacher", "--data", tmp_path / "tiny.jsonl", "--out", student, "--steps",
            "1", "--batch-size", "2", "--group", "2", "--quiet", "--set", "train.eval_every=0"]
    (tmp_path / "tiny.jsonl").write_text("")
    code, err = run_cli(argv, capsys)
    assert code != 0 and "Traceback" not in err and not student.exists()
    shutil.copy(runs / "corpus.jsonl", tmp_path / "tiny.jsonl")
    main([str(a) for a in argv])
    assert (student / "config.json").is_file() and (student / "model.safetensors").is_file()
