"""Each stage is a Typer command with --help, and bad params fail fast with exit code 2."""

import subprocess
import sys

import pytest

STAGES = ["finetune", "generate", "score", "pair", "dpo", "evaluate"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(in_repo, stage):
    result = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--params" in result.stdout
    if stage not in ("finetune", "evaluate"):
        assert "--round" in result.stdout


def test_bad_params_and_unknown_round_exit_2_with_one_line(in_repo, tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text((in_repo / "params.yaml").read_text().replace("lambda: 0.5", "lambda: 2"))
    result = subprocess.run([sys.executable, "-m", "stages.pair", "--round", "round_1", "--params", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {bad}: pair.lambda=2.0 is invalid: expected a value in [0, 1]"
    result = subprocess.run([sys.executable, "-m", "stages.generate", "--round", "round_9"], capture_output=True, text=True)
    assert result.returncode == 2 and "--round round_9: not in params.yaml rounds (round_1, round_2)" in result.stderr
