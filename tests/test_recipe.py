"""The recipe as one call (`didi recipe`, `didi.recipe.run_recipe`): its stages run in order, a rerun trains nothing
again, a stopped stage resumes exactly, and bad input is one clear line."""

import json

import pytest
import torch
from conftest import english_teacher
from safetensors.torch import load_file

import didi
from didi.cli import main
from didi.distill import distill, distill_preset
from didi.errors import DidiError
from didi.recipe import run_recipe

QUIET = ["train.eval_every=0", "train.log_every=1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return english_teacher(tmp_path_factory.mktemp("recipe_teacher"), docs=200, steps=10)


def test_recipe_runs_its_stages_once_and_the_result_samples_from_its_prior(teacher, tmp_path):
    out = tmp_path / "r"
    run = run_recipe(teacher, out, stage="dmmd", latent_steps=2, stage_steps=2, overrides=QUIET, progress=False)
    assert run == out / "dmmd"
    assert (out / "latent.done").is_file() and (out / "dmmd.done").is_file()
    assert (out / "latent" / "noise_prior.safetensors").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert saved["distill"]["method"] == "dmmd" and saved["distill"]["student_init"] == str((out / "latent").resolve())
    assert json.loads((out / "latent" / "config.json").read_text())["distill"]["method"] == "latent"
    weights = {p: (out / p / "model.safetensors").stat().st_mtime_ns for p in ("latent", "dmmd")}
    assert run_recipe(teacher, out, stage="dmmd", latent_steps=2, stage_steps=2, overrides=QUIET,
                      progress=False) == run
    assert weights == {p: (out / p / "model.safetensors").stat().st_mtime_ns for p in ("latent", "dmmd")}
    s = didi.load(run).sample(num=2, steps=4, seed=0)
    assert s.tokens.shape == (2, 16) and s.nfe_mean <= 4


def test_a_stopped_latent_stage_resumes_to_the_uninterrupted_weights(teacher, tmp_path):
    full = run_recipe(teacher, tmp_path / "full", latent_steps=4, overrides=QUIET, progress=False)
    part = tmp_path / "part"
    part.mkdir()
    distill(teacher, part / "latent", distill_preset("latent-lang", ["max_steps=4"]), overrides=QUIET, until_step=2,
            progress=False)
    assert not (part / "latent.done").exists()
    resumed = run_recipe(teacher, part, latent_steps=4, overrides=QUIET, progress=False)
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_bad_input_is_one_line(teacher, tmp_path, capsys):
    with pytest.raises(DidiError, match="recipe stage must be one of none, dmmd, didi"):
        run_recipe(teacher, tmp_path / "x", stage="sdtt")
    with pytest.raises(SystemExit) as e:
        main(["recipe", "--out", str(tmp_path / "y")])
    assert e.value.code != 0 and "recipe needs --teacher" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recipe", "--teacher", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0] and "Traceback" not in err[0]
    (tmp_path / "w" / "latent").mkdir(parents=True)
    (tmp_path / "w" / "latent" / "notes.txt").write_text("mine")
    with pytest.raises(DidiError, match="holds files but no checkpoint"):
        run_recipe(teacher, tmp_path / "w")
