"""Each stage is a Typer command with --help, and bad params or inputs fail fast with exit
code 2 and one line. Run in-process with Typer's runner (a subprocess costs ~12 s of imports)."""

import importlib

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

STAGES = ["finetune", "generate", "score", "pair", "dpo", "evaluate"]


def invoke(stage: str, *args: str):
    return CliRunner().invoke(importlib.import_module(f"stages.{stage}").app, list(args))


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(in_repo, stage):
    result = invoke(stage, "--help")
    assert result.exit_code == 0
    assert "--params" in result.stdout
    if stage not in ("finetune", "evaluate"):
        assert "--round" in result.stdout


def test_bad_params_and_unknown_round_exit_2_with_one_line(in_repo, tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text((in_repo / "params.yaml").read_text().replace("lambda: 0.5", "lambda: 2"))
    result = invoke("pair", "--round", "round_1", "--params", str(bad))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {bad}: pair.lambda=2.0 is invalid: expected a value in [0, 1]"
    result = invoke("generate", "--round", "round_9")
    assert result.exit_code == 2 and "--round round_9: not in params.yaml rounds (round_1, round_2)" in result.stderr


def test_a_prompt_pool_too_small_for_a_later_round_fails_before_round_1_runs(in_repo, tmp_path, monkeypatch):
    params = yaml.safe_load((in_repo / "params.yaml").read_text())
    params["generate"]["num_prompts"] = 80  # 3 rounds x 80 > the 210 training prompts
    params["rounds"]["round_3"] = {"start": "round_2"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").mkdir()
    (tmp_path / "data/prompts").symlink_to(in_repo / "data/prompts")
    monkeypatch.chdir(tmp_path)
    result = invoke("generate", "--round", "round_1")
    assert result.exit_code == 2
    assert ("error: rounds.round_3: data/prompts/train.txt: this round needs prompts 160..239 but the pool has "
            "210") in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]  # nothing written


def test_a_stage_that_fails_leaves_no_previous_output_behind(in_repo, tmp_path, monkeypatch):
    """pair run by hand with a filter that keeps nothing: last run's preferences must not stay
    for `python -m stages.dpo` to train on as if they were this run's."""
    params = yaml.safe_load((in_repo / "params.yaml").read_text())
    params["filter"].update(kind="threshold", threshold=100.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "rounds/round_1"
    (out / "preferences").mkdir(parents=True)
    (out / "preferences/pairs.parquet").write_bytes(b"last run's pairs")
    (out / "pair_summary.json").write_text("{}")
    pd.DataFrame({"image_id": [f"p{p}_k{k}" for p in range(2) for k in range(3)],
                  "prompt_id": [p for p in range(2) for _ in range(3)], "prompt": ["a sks toy"] * 6,
                  "path": [f"{i}.png" for i in range(6)], "IS": [0.1, 0.2, 0.3] * 2,
                  "TS": [0.3, 0.2, 0.1] * 2}).to_parquet(out / "scores.parquet")
    monkeypatch.chdir(tmp_path)
    result = invoke("pair", "--round", "round_1")
    assert result.exit_code == 2 and "error: no preference pairs left" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["scores.parquet"]
