"""`didi demo` end to end at a few seconds per stage, from the shipped teacher and from scratch: the table has the
teacher's and the student's rows with exact judgements, and a second run samples the trained models again instead of
training over them. The shipped teacher itself is a finished `stories` MDLM."""

import json

import pytest
import torch
from conftest import english_teacher
from safetensors.torch import load_file

import didi
from didi.demo import ASSET, DEMO_STEPS, STUDENT_STEPS, pack_teacher, run_demo, shipped_teacher
from didi.errors import DidiError
from didi.language import Grammar, score_texts


def _rows(printed: str) -> list[list[str]]:
    rows = [line.split() for line in printed.splitlines() if line.startswith(("teacher ", "student "))]
    assert [(r[0], int(r[1])) for r in rows] == ([("teacher", s) for s in DEMO_STEPS] +
                                                 [("student", s) for s in STUDENT_STEPS])
    for _, steps, sentences, texts, _, nfe, *_ in rows:  # (diversity is NaN where nothing parses)
        assert 0.0 <= float(sentences) <= 1.0 and texts.endswith("/4")
        assert 1.0 <= float(nfe) <= int(steps)  # a network evaluation only where a step reveals something
    return rows


def test_demo_from_the_shipped_teacher_trains_the_student_only_and_reuses_it(tmp_path, capsys):
    out = tmp_path / "demo"
    run_demo(out, distill_minutes=0.05, latent_steps=3, num=4)
    _rows(capsys.readouterr().out)
    assert not (out / "model.safetensors").exists()  # the teacher stays in the package
    assert (out / "latent" / "noise_prior.safetensors").is_file()
    cfg = json.loads((out / "latent" / "config.json").read_text())
    assert cfg["distill"]["method"] == "latent" and cfg["model"]["hidden_dim"] == 256  # the shipped shape
    run_demo(out, distill_minutes=0.05, latent_steps=3, num=4)
    again = capsys.readouterr().out
    assert "ships with didi" in again and "found a trained latent student" in again
    assert "finished earlier" not in again  # one line says the student is reused, not two
    with pytest.raises(DidiError, match="shipped teacher; choose another --out"):
        run_demo(out, from_scratch=True, num=4)


def test_demo_from_scratch_trains_both_stages_and_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    run_demo(out, from_scratch=True, minutes=0.03, distill_minutes=0.03, num=4)
    _rows(capsys.readouterr().out)
    assert (out / "model.safetensors").is_file() and (out / "latent" / "noise_prior.safetensors").is_file()
    run_demo(out, minutes=0.03, distill_minutes=0.03, num=4)  # without the flag: the directory says what it holds
    again = capsys.readouterr().out
    assert "found a teacher trained by an earlier --from-scratch demo" in again
    assert "found a trained latent student" in again
    (out / "teacher.done").unlink()  # as if stopped before the teacher finished: the rerun resumes it
    run_demo(out, minutes=0.03, distill_minutes=0.03, num=4)
    assert "resuming the teacher" in capsys.readouterr().out and (out / "teacher.done").is_file()


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DidiError, match="not a demo directory"):
        run_demo(tmp_path, num=4)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_the_shipped_teacher_is_a_finished_stories_mdlm():
    path = shipped_teacher()
    assert path == ASSET
    info = json.loads((path / "teacher.json").read_text())
    assert info["steps"] == 5000 and "didi train --preset lang-tiny" in info["command"]
    assert {t.dtype for t in load_file(str(path / "model.safetensors")).values()} == {torch.bfloat16}
    pipe = didi.load(path)
    assert pipe.run.config.model.hidden_dim == 256 and pipe.run.config.model.noise_dim == 0
    texts = pipe.sample(num=32, steps=128, seed=0).text
    # a trained teacher writes mostly valid sentences at many steps; an untrained or broken one next to none
    assert score_texts(Grammar.load("stories"), texts)["valid_sentences"] > 0.5


def test_pack_teacher_stores_bf16_weights_that_load_back_close_to_the_run(tmp_path):
    run = english_teacher(tmp_path)
    dest = pack_teacher(run, tmp_path / "packed", command="didi train --preset test")
    assert {t.dtype for t in load_file(str(dest / "model.safetensors")).values()} == {torch.bfloat16}
    assert json.loads((dest / "config.json").read_text())["data"]["cache_dir"] == ""
    with pytest.raises(DidiError, match="already holds a teacher"):
        pack_teacher(run, dest)
    ra, rb = didi.load(run).run, didi.load(dest).run
    a, b = ra.model, rb.model
    x = torch.randint(0, ra.config.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    sigma = torch.zeros(2)
    with torch.no_grad():
        la, lb = a(x, sigma), b(x, sigma)
    assert next(b.parameters()).dtype == torch.float32
    finite = torch.isfinite(la)
    assert torch.allclose(la[finite], lb[finite], atol=0.1, rtol=0.05) and not torch.equal(la, lb)
