"""The `dbdpo` command as a user runs it: the installed console script, in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.cli import COMMANDS
from tests.conftest import REPO, invoke_stage

DBDPO = Path(sys.executable).parent / "dbdpo"  # the console script pip installed beside python


def dbdpo(*args, cwd=REPO):
    return subprocess.run([str(DBDPO), *args], cwd=cwd, capture_output=True, text=True)


def test_help_lists_every_stage_and_tool():
    result = dbdpo("--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:")[1].splitlines()
    listed = [line.split()[0] for line in commands if line.startswith("  ") and not line.startswith("   ")]
    assert listed == ["finetune", "generate", "score", "pair", "dpo", "frontier", "evaluate", "export", "prompts", "init", "show", "summary", "concepts", "check", "status"]


@pytest.mark.parametrize("stage", ["finetune", "generate", "score", "pair", "dpo", "frontier", "evaluate"])
def test_a_stages_help_names_the_params_it_reads_without_loading_torch(stage):
    """The stage's own Typer command (the one dvc.yaml runs), its help from the module alone:
    the model stack loads only when the stage runs."""
    code = ("import sys; from stages.cli import cli; "
            f"cli(['{stage}', '--help'], standalone_mode=False); "
            "print('torch loaded:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    reads = __import__(f"stages.{stage}", fromlist=["READS"]).READS
    text = " ".join(result.stdout.split())  # help wraps long lines
    assert "Reads params: " + ", ".join(reads) in text.replace(" ,", ",")
    assert "--params" in text and ("--round" in text) == (stage not in ("finetune", "frontier", "evaluate"))
    assert text.endswith("torch loaded: False")


@pytest.mark.parametrize("command", ["show", "check", "status"])
def test_looking_at_a_project_loads_no_torch(command, tmp_path):
    """show, check and status read files (and ask dvc): none of them needs torch, diffusers or
    open_clip, so none loads them. status runs `dvc status`, which
    locks its project: here a project of its own (the repository's params and pipeline, nothing
    run), not the checkout that bench/startup.py's test asks at the same time."""
    cwd = REPO
    if command == "status":
        cwd = tmp_path
        for name in ("params.yaml", "dvc.yaml"):
            (tmp_path / name).write_text((REPO / name).read_text())
        subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    code = ("import sys; from stages.cli import cli; "
            f"cli(['{command}'], standalone_mode=False); "
            "print('torch loaded:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith({"show": "round_0 ", "check": "everything the params name",
                                                     "status": "round_0 "}[command]), result.stdout
    assert result.stdout.endswith("torch loaded: False\n")


@pytest.mark.slow
def test_a_stage_runs_through_dbdpo_as_through_python_m(tmp_path):
    """`dbdpo pair` is `python -m stages.pair`: the same command, the same error for a bad round."""
    through_cli = dbdpo("pair", "--round", "round_9")
    through_module = subprocess.run([sys.executable, "-m", "stages.pair", "--round", "round_9"], cwd=REPO,
                                    capture_output=True, text=True)
    assert through_cli.returncode == through_module.returncode == 2
    assert "--round round_9: not in params.yaml rounds (round_1, round_2)" in through_cli.stderr
    assert through_cli.stderr == through_module.stderr


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    result = dbdpo("--version")
    assert result.returncode == 0 and result.stdout == f"dbdpo {version('dbdpo')}\n"


def test_every_command_module_has_a_typer_app():
    for module, _ in COMMANDS.values():
        assert hasattr(__import__(module, fromlist=["app"]), "app"), module


def test_show_prints_each_round_with_its_standard_errors_and_gains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = invoke_stage("show")
    assert missing.exit_code == 2
    assert missing.stderr.strip() == "error: eval/rounds.json is missing: `dvc repro` runs the evaluate stage that writes it"
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval/rounds.json").write_text(json.dumps({
        "round_0": {"IS": 0.2, "TS": 0.3, "IS_std": 0.4, "TS_std": 0.2, "images": 16},
        "round_1": {"IS": 0.25, "TS": 0.31, "IS_std": 0.4, "TS_std": 0.2, "images": 16, "IS_gain": 0.125,
                    "IS_gain_se": 0.05, "TS_gain": 0.05, "TS_gain_se": 0.04, "S_0.5_gain": 0.09,
                    "S_0.5_gain_se": 0.03}}))
    shown = invoke_stage("show")
    assert shown.exit_code == 0
    assert shown.stdout.splitlines() == [
        "round_0   IS 0.2000 ± 0.1000   TS 0.3000 ± 0.0500   (16 images)",
        "round_1   IS 0.2500 ± 0.1000   TS 0.3100 ± 0.0500   gain (round_0 stds): IS +0.125 ± 0.050  "
        "TS +0.050 ± 0.040  S_0.5 +0.090 ± 0.030   (16 images)"]

    # several concepts: each one's rounds under its name, or --concept's alone
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["concepts"] = {name: {"dir": name, "token": "sks", "class_noun": name} for name in ("dog", "cat")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "concepts/dog/eval").mkdir(parents=True)
    (tmp_path / "eval/rounds.json").rename(tmp_path / "concepts/dog/eval/rounds.json")
    assert invoke_stage("show", "--concept", "dog").stdout.splitlines()[1:] == shown.stdout.splitlines()
    missing = invoke_stage("show")
    assert missing.exit_code == 2 and "concepts/cat/eval/rounds.json is missing" in missing.stderr
    assert "not in params.yaml concepts (dog, cat)" in invoke_stage("show", "--concept", "cow").stderr
