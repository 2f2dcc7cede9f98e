"""`dbdpo init` as a user runs it: from the installed wheel, in an empty folder (no clone of this
repository anywhere on the path). `dvc repro` in the project it writes is tests/test_e2e_dvc.py's
baseline: every dvc test runs on such a project, with the wheel's `dbdpo` as the stages' command."""

import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run(args, cwd, env, check=True):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def test_init_writes_a_committed_project_that_checks_out(installed, tmp_path):
    site, env = installed
    where = run([sys.executable, "-c", "import stages, dbdpo; print(stages.__file__, dbdpo.__file__)"], tmp_path, env)
    assert where.stdout.count(str(site)) == 2  # the wheel's code, not this checkout's

    photos = tmp_path / "photos"
    shutil.copytree(REPO / "data/concept", photos)
    (photos / "toy_00.txt").write_text("a toy on a table")  # a caption beside a photo: kept, not read
    run(["dbdpo", "init", "my-toy", "--concept", str(photos), "--class-noun", "toy"], tmp_path, env)
    project = tmp_path / "my-toy"
    assert sorted(p.name for p in (project / "data/concept").iterdir()) == sorted(
        [f"toy_0{i}.png" for i in range(6)] + ["toy_00.txt"])
    installed_version = run([sys.executable, "-c", "from importlib.metadata import version; print(version('dbdpo'))"],
                            tmp_path, env).stdout.strip()
    assert (project / "requirements.txt").read_text() == f"dbdpo=={installed_version}\n"
    checked = run(["dbdpo", "check"], project, env)
    assert checked.stdout.strip() == "everything the params name is here"
    (project / "requirements.txt").write_text("dbdpo==0.0.1\n")
    checked = run(["dbdpo", "check"], project, env)
    assert f"pins dbdpo==0.0.1, but dbdpo {installed_version} is installed" in checked.stdout
    (project / "requirements.txt").write_text(f"dbdpo=={installed_version}\n")
    dvc_yaml = (project / "dvc.yaml").read_text()
    assert "cmd: dbdpo finetune" in dvc_yaml and "python -m" not in dvc_yaml and "stages/" not in dvc_yaml
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["concept"] == {**params["concept"], "dir": "data/concept", "class_noun": "toy"}
    assert run(["git", "status", "--porcelain"], project, env).stdout == ""  # all committed


def test_init_refuses_a_used_folder_or_bad_input_and_writes_nothing(installed, tmp_path):
    site, env = installed
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/notes.txt").write_text("mine")
    cases = [
        (["taken", "--concept", str(REPO / "data/concept"), "--class-noun", "toy"], "exists and is not an empty folder"),
        (["new", "--concept", str(tmp_path / "nope"), "--class-noun", "toy"], "--concept: concept.dir="),
        (["new", "--concept", str(REPO / "data/concept"), "--class-noun", "toy", "--preset", "sd3"],
         "--preset 'sd3': expected one of default, sd2, sd21, sdxl"),
    ]
    for args, message in cases:
        result = run(["dbdpo", "init", *args], tmp_path, env, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_init_with_a_gpu_preset_takes_the_pool_and_eval_set_of_the_kind(installed, tmp_path):
    site, env = installed
    run(["dbdpo", "init", "my-dog", "--concept", str(REPO / "data/concept"), "--class-noun", "dog", "--kind", "live",
         "--preset", "sdxl"], tmp_path, env)
    project = tmp_path / "my-dog"
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["model"]["backbone"] == "sdxl" and params["concept"]["class_noun"] == "dog"
    assert (project / "data/prompts/train.txt").read_text() == (REPO / "data/prompts/pool_live.txt").read_text()
    assert (project / "data/prompts/eval.txt").read_text() == (REPO / "data/prompts/dreambooth_live.txt").read_text()
    keys = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {g: set(v) for g, v in params.items()} == {g: set(v) for g, v in keys.items()}  # every key kept
    preset = yaml.safe_load((REPO / "presets/sdxl.yaml").read_text())
    assert all(params[g][k] == v for g, values in preset.items() for k, v in values.items()
               if (g, k) not in {("generate", "prompts"), ("evaluate", "prompts")})  # the overlay applied
