"""`didi demo` end to end at a few seconds per stage: the table has the teacher's and the student's rows with exact
judgements, and a second run samples the trained models again instead of training over them."""

from didi.demo import DEMO_STEPS, STUDENT_STEPS, run_demo


def test_demo_trains_both_stages_prints_the_table_and_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    run_demo(out, minutes=0.03, distill_minutes=0.03, num=4)
    first = capsys.readouterr().out
    rows = [line.split() for line in first.splitlines() if line.startswith(("teacher ", "student "))]
    assert [(r[0], int(r[1])) for r in rows] == ([("teacher", s) for s in DEMO_STEPS] +
                                                 [("student", s) for s in STUDENT_STEPS])
    for _, steps, sentences, texts, _, nfe, *_ in rows:  # (diversity is NaN where nothing parses)
        assert 0.0 <= float(sentences) <= 1.0 and texts.endswith("/4")
        assert 1.0 <= float(nfe) <= int(steps)  # a network evaluation only where a step reveals something
    assert (out / "model.safetensors").is_file() and (out / "latent" / "noise_prior.safetensors").is_file()
    run_demo(out, minutes=0.03, distill_minutes=0.03, num=4)
    again = capsys.readouterr().out
    assert "found a trained teacher" in again and "found a trained latent student" in again
