import json

import pytest

from didi.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return e.value.code, err


@pytest.mark.parametrize("args,needle", [
    (["train", "--data", "/no/such/file.jsonl", "--out", "{tmp}/r"], "does not exist"),
    (["train", "--out", "{tmp}/r"], "no training data"),
    (["train", "--data", "{tmp}/c.jsonl", "--out", "{tmp}/r", "--set", "model.widgets=3"], "unknown config key"),
    (["train", "--data", "{tmp}/c.jsonl", "--out", "{tmp}/r", "--set", "train.lr=fast"], "bad value"),
    (["train", "--data", "{tmp}/c.jsonl", "--out", "{tmp}/r", "--preset", "huge"], "unknown preset"),
    (["train", "--data", "{tmp}/c.jsonl", "--out", "{tmp}/r", "--resume"], "cannot resume"),
    (["train", "--data", "{tmp}/empty.jsonl", "--out", "{tmp}/r", "--tokenizer", "gpt2"], "empty"),
    (["sample", "{tmp}/missing-run"], "does not exist"),
])
def test_user_mistakes_are_one_line_errors(args, needle, tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    code, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("didi: error:") and needle in err[0], err
