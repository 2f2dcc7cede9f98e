"""The `dbdpo` command as a user runs it: the installed console script, in a subprocess."""

import subprocess
import sys
from pathlib import Path

import pytest

from stages.cli import COMMANDS
from tests.conftest import REPO

DBDPO = Path(sys.executable).parent / "dbdpo"  # the console script pip installed beside python


def dbdpo(*args, cwd=REPO):
    return subprocess.run([str(DBDPO), *args], cwd=cwd, capture_output=True, text=True)


def test_help_lists_every_stage_and_tool():
    result = dbdpo("--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:")[1].splitlines()
    listed = [line.split()[0] for line in commands if line.startswith("  ") and not line.startswith("   ")]
    assert listed == ["finetune", "generate", "score", "pair", "dpo", "evaluate", "export", "init", "check", "status"]


@pytest.mark.parametrize("stage", ["finetune", "generate", "score", "pair", "dpo", "evaluate"])
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
    assert "--params" in text and ("--round" in text) == (stage not in ("finetune", "evaluate"))
    assert text.endswith("torch loaded: False")


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
