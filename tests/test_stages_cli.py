"""Each stage is a Typer command with --help, and bad params or inputs fail fast with exit
code 2 and one line. Run in-process with Typer's runner (a subprocess costs ~12 s of imports)."""

import importlib
import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dbdpo.provenance import RECORD_FILE, RECORD_KEY, digest, made_from
from tests.conftest import REPO, invoke_stage
from tests.test_bench import bench_module

STAGES = ["finetune", "generate", "score", "pair", "dpo", "frontier", "evaluate"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(in_repo, stage):
    result = invoke_stage(stage, "--help")
    assert result.exit_code == 0
    assert "--params" in result.stdout
    if stage not in ("finetune", "frontier", "evaluate"):
        assert "--round" in result.stdout


def test_bad_params_and_unknown_round_exit_2_with_one_line(in_repo, tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text((in_repo / "params.yaml").read_text().replace("lambda: 0.5", "lambda: 2"))
    result = invoke_stage("pair", "--round", "round_1", "--params", str(bad))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {bad}: pair.lambda=2.0 is invalid: expected a value in [0, 1]"
    result = invoke_stage("generate", "--round", "round_9")
    assert result.exit_code == 2 and "--round round_9: not in params.yaml rounds (round_1, round_2)" in result.stderr


def test_a_prompt_pool_too_small_for_a_later_round_fails_before_round_1_runs(in_repo, tmp_path, monkeypatch):
    params = yaml.safe_load((in_repo / "params.yaml").read_text())
    params["generate"]["num_prompts"] = 80  # 3 rounds x 80 > the 210 training prompts
    params["rounds"]["round_3"] = {"start": "round_2"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").mkdir()
    (tmp_path / "data/prompts").symlink_to(in_repo / "data/prompts")
    monkeypatch.chdir(tmp_path)
    result = invoke_stage("generate", "--round", "round_1")
    assert result.exit_code == 2
    assert ("error: rounds.round_3: data/prompts/train.txt: this round needs prompts 160..239 but the pool has "
            "210") in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]  # nothing written


STARTUP = bench_module("startup")  # bench/startup.py times pair on this same round
scores_frame = STARTUP.scores_frame


@pytest.fixture
def scored_round(tmp_path, monkeypatch):
    """A project in tmp_path whose round_1 has samples and scores made from them (as score
    writes them); returns the round's folder."""
    monkeypatch.chdir(tmp_path)
    return STARTUP.scored_round(tmp_path)


def test_a_stage_that_fails_leaves_no_previous_output_behind(scored_round):
    """pair run by hand with a filter that keeps nothing: last run's preferences must not stay
    for `python -m stages.dpo` to train on as if they were this run's."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["filter"].update(kind="threshold", threshold=100.0)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    out = scored_round
    (out / "preferences").mkdir(parents=True)
    (out / "preferences/pairs.parquet").write_bytes(b"last run's pairs")
    (out / "pair_summary.json").write_text("{}")
    result = invoke_stage("pair", "--round", "round_1")
    assert result.exit_code == 2 and "error: no preference pairs left" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["images", "samples.parquet", "scores.parquet"]


def test_a_full_disk_ends_in_one_line_naming_the_file_and_the_fix(scored_round, monkeypatch):
    """ENOSPC while writing the preferences was a raw OSError traceback; the atomic write has
    left nothing behind that the dpo stage would accept."""
    import errno

    import dbdpo.preferences

    def full_disk(prefs, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "pairs.parquet"))

    monkeypatch.setattr(dbdpo.preferences, "write_preferences", full_disk)
    result = invoke_stage("pair", "--round", "round_1")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "pairs.parquet: No space left on device; no space left on the device: free space, then rerun")
    assert sorted(p.name for p in scored_round.iterdir()) == ["images", "samples.parquet", "scores.parquet"]


def test_pair_refuses_scores_made_from_a_manifest_that_changed_since(scored_round):
    """generate (or score's input) rerun by hand, score not: pair must not pair stale scores."""
    (scored_round / "samples.parquet").write_bytes(b"a newer manifest")
    result = invoke_stage("pair", "--round", "round_1")
    assert result.exit_code == 2
    assert ("error: rounds/round_1/scores.parquet was made from another rounds/round_1/samples.parquet "
            "(it changed since); rerun score@round_1 before this stage") in result.stderr
    assert sorted(p.name for p in scored_round.iterdir()) == ["images", "samples.parquet", "scores.parquet"]


def test_pair_and_dpo_refuse_images_changed_after_they_were_scored_or_paired(scored_round):
    """The records once covered the tables, not the images: a hand-run pair or dpo trained on
    images their scores were not computed from."""
    image = scored_round / "images" / "0.png"
    image.write_bytes(b"an image drawn later")
    result = invoke_stage("pair", "--round", "round_1")
    assert result.exit_code == 2
    assert ("rounds/round_1/scores.parquet was made from another rounds/round_1/images (it changed since); "
            "rerun score@round_1") in result.stderr
    image.write_bytes(b"image 0")
    assert invoke_stage("pair", "--round", "round_1").exit_code == 0
    image.write_bytes(b"an image drawn after pairing")
    result = invoke_stage("dpo", "--round", "round_1")
    assert result.exit_code == 2
    assert ("rounds/round_1/preferences was made from another rounds/round_1/images (it changed since); "
            "rerun pair@round_1") in result.stderr


def test_pair_runs_without_loading_torch(scored_round):
    """pair trains nothing: as its own process (as dvc runs it) it loads no torch, whose imports
    would be most of the stage's time (bench/startup.py)."""
    import subprocess
    import sys

    code = ("import runpy, sys\n"
            "sys.argv = ['stages.pair', '--round', 'round_1']\n"
            "try:\n    runpy.run_module('stages.pair', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False" and (scored_round / "preferences/pairs.parquet").is_file()


def test_pair_refuses_scores_that_do_not_record_their_inputs(scored_round):
    scores_frame().to_parquet(scored_round / "scores.parquet")  # as an older version wrote it
    result = invoke_stage("pair", "--round", "round_1")
    assert result.exit_code == 2
    assert ("error: rounds/round_1/scores.parquet does not record what it was made from (an older version "
            "wrote it); rerun score@round_1") in result.stderr


def test_pair_records_its_scores_and_dpo_refuses_the_preferences_once_scores_change(scored_round):
    assert invoke_stage("pair", "--round", "round_1").exit_code == 0
    assert json.loads((scored_round / "preferences" / RECORD_FILE).read_text()) == {
        "rounds/round_1/scores.parquet": digest(scored_round / "scores.parquet"),
        "rounds/round_1/images": digest(scored_round / "images")}
    frame = scores_frame().assign(IS=[0.3, 0.2, 0.1] * 2)  # score rerun by hand, pair not
    frame.attrs = {RECORD_KEY: made_from(Path("rounds/round_1/samples.parquet"), Path("rounds/round_1/images"))}
    frame.to_parquet(scored_round / "scores.parquet")
    result = invoke_stage("dpo", "--round", "round_1")
    assert result.exit_code == 2
    assert ("error: rounds/round_1/preferences was made from another rounds/round_1/scores.parquet "
            "(it changed since); rerun pair@round_1 before this stage") in result.stderr
    assert not Path("models").exists()


def test_a_dpo_timestep_range_past_the_scheduler_fails_before_the_rounds_model_is_removed(scored_round):
    """dpo.max_timestep past the scheduler's 1000 is known only once the backbone is loaded; the
    stage once removed models/round_1 before it found out."""
    from dbdpo.backbones import load_backbone
    from dbdpo.config import ModelConfig
    from dbdpo.lora import save_lora
    from tests.test_lora import random_lora

    assert invoke_stage("pair", "--round", "round_1").exit_code == 0
    save_lora(load_backbone(ModelConfig()).pipe, random_lora(0), Path("models/round_0"), made_from={})
    Path("models/round_1").mkdir()
    (Path("models/round_1") / "last_run.txt").write_text("the last run's model")
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["dpo"]["max_timestep"] = 2000
    Path("params.yaml").write_text(yaml.safe_dump(params))
    result = invoke_stage("dpo", "--round", "round_1")
    assert result.exit_code == 2 and "2000" in result.stderr and "max_timestep" in result.stderr, result.output
    assert (Path("models/round_1") / "last_run.txt").read_text() == "the last run's model"


def test_generate_refuses_a_start_model_whose_preferences_changed_since(scored_round):
    assert invoke_stage("pair", "--round", "round_1").exit_code == 0
    model = Path("models/round_1")
    model.mkdir(parents=True)
    (model / RECORD_FILE).write_text(json.dumps(made_from(Path("rounds/round_1/preferences"))))
    (scored_round / "preferences" / "pairs.parquet").write_bytes(b"pairs from a later pair run")
    Path("data").mkdir()
    Path("data/prompts").symlink_to(REPO / "data/prompts")
    result = invoke_stage("generate", "--round", "round_2")
    assert result.exit_code == 2
    assert ("error: models/round_1 was made from another rounds/round_1/preferences (it changed since); "
            "rerun dpo@round_1 before this stage") in result.stderr
    assert not Path("rounds/round_2").exists()


def test_a_round_stage_takes_its_round_from_dvc_stage_or_needs_round(scored_round):
    """dvc.yaml passes no round on the command line: DVC's DVC_STAGE (pair@round_1) names it."""
    runner = CliRunner()
    pair = importlib.import_module("stages.pair").app
    result = runner.invoke(pair, [], env={"DVC_STAGE": "pair@round_1"})
    assert result.exit_code == 0 and (scored_round / "preferences" / "pairs.parquet").is_file()
    result = runner.invoke(pair, [], env={"DVC_STAGE": ""})
    assert result.exit_code == 2
    assert "error: --round is required (e.g. --round round_1) when pair runs outside dvc repro" in result.stderr
    result = runner.invoke(pair, [], env={"DVC_STAGE": "score@round_1"})
    assert result.exit_code == 2 and "DVC_STAGE='score@round_1' is not a pair@<round> stage" in result.stderr
