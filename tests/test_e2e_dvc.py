"""The pipeline through the real `dvc` CLI, in a temporary git copy of this repository."""

import json
import os
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Small enough for CI, big enough that every stage does real work.
FAST_PARAMS = {
    "finetune": {"steps": 20},
    "generate": {"num_prompts": 2, "images_per_prompt": 4, "steps": 4},
    "filter": {"angle": 60},
    "dpo": {"steps": 4, "batch_size": 2},
    "evaluate": {"num_prompts": 2, "images_per_prompt": 1, "steps": 4, "grid_prompts": 2},
}
ROUND_1 = ("generate@round_1", "score@round_1", "pair@round_1", "dpo@round_1")
ROUND_2 = ("generate@round_2", "score@round_2", "pair@round_2", "dpo@round_2")
ROUND_3 = ("generate@round_3", "score@round_3", "pair@round_3", "dpo@round_3")


def run(args, cwd, check=True):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def copy_project(root, params: dict) -> None:
    """A fresh clone-like copy in `root`: the repo's git-visible files minus pipeline outputs,
    `params` as params.yaml, one commit."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        src = REPO / name
        outputs = name.startswith(("models/", "rounds/", "eval/")) or name in ("dvc.lock", "metrics.json")
        if src.is_file() and not outputs:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "init"], root)


def fast_params(rounds: int = 2) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for group, values in FAST_PARAMS.items():
        params[group].update(values)
    params["rounds"] = {f"round_{r}": {"start": f"round_{r - 1}"} for r in range(1, rounds + 1)}
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    copy_project(root, fast_params())
    return root


def test_repro_then_noop_then_angle_experiment(project):
    first = run(["dvc", "repro"], project)
    for stage in ("finetune", *ROUND_1, *ROUND_2, "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout

    # artifacts and their schemas
    assert (project / "models/round_0/pytorch_lora_weights.safetensors").is_file()
    assert (project / "models/round_1/pytorch_lora_weights.safetensors").is_file()
    samples = pd.read_parquet(project / "rounds/round_1/samples.parquet")
    assert list(samples.columns) == ["image_id", "prompt_id", "template", "prompt", "seed", "path"]
    assert len(samples) == 8 and samples["seed"].is_unique
    scores = pd.read_parquet(project / "rounds/round_1/scores.parquet")
    assert {"IS", "TS"} <= set(scores.columns) and len(scores) == 8
    assert "DINO" not in scores.columns  # no trained DINO in the proving ground: off by default
    pairs = pd.read_parquet(project / "rounds/round_1/preferences/pairs.parquet")
    assert len(pairs) > 0 and (pairs["winner_id"] != pairs["loser_id"]).all()
    assert pairs["angle"].between(-15, 105).all()  # center 45 +- 60
    assert list(pd.read_parquet(project / "rounds/round_1/preferences/pickapic.parquet").columns) == [
        "jpg_0", "jpg_1", "label_0", "caption"]
    metrics = json.loads((project / "metrics.json").read_text())
    assert list(metrics) == ["final", "round_0", "round_1", "round_2"]
    assert metrics["final"] == metrics["round_2"] and set(metrics["final"]) >= {"IS", "TS"}
    # round 2 sampled the next slice of the prompt pool, from the round-1 model
    r2 = pd.read_parquet(project / "rounds/round_2/samples.parquet")
    assert not set(r2["template"]) & set(samples["template"])
    assert sorted(p.name for p in (project / "eval/grids").iterdir()) == ["prompt_00.png", "prompt_01.png"]
    assert not list(project.rglob(".tmp-*"))

    second = run(["dvc", "repro"], project)
    assert "Data and pipelines are up to date" in second.stdout
    assert "Running stage" not in second.stdout

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)
    exp = run(["dvc", "exp", "run", "-S", "filter.angle=30"], project)
    out = exp.stdout
    for skipped in ("finetune", "generate@round_1", "score@round_1"):
        assert f"Stage '{skipped}' didn't change, skipping" in out
        assert f"Running stage '{skipped}'" not in out
    for rerun in ("pair@round_1", "dpo@round_1", *ROUND_2, "evaluate"):
        assert f"Running stage '{rerun}'" in out

    # dvc exp show: the baseline commit and the experiment, each with its own IS / TS
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    baseline = next(row for row in shown if row["rev"] != "workspace")
    experiment = baseline["experiments"][0]["revs"][0]["data"]

    def final(data):
        return data["metrics"]["metrics.json"]["data"]["final"]

    def angle(data):
        return data["params"]["params.yaml"]["data"]["filter"]["angle"]

    assert angle(baseline["data"]) == 60 and angle(experiment) == 30
    assert {"IS", "TS"} <= set(final(baseline["data"])) and {"IS", "TS"} <= set(final(experiment))
    assert final(baseline["data"]) == metrics["final"]


def test_bad_param_fails_before_any_work(project):
    result = run(["dvc", "exp", "run", "-S", "pair.lambda=1.5"], project, check=False)
    assert result.returncode != 0
    assert "pair.lambda=1.5 is invalid: expected a value in [0, 1]" in result.stdout + result.stderr


def file_state(root, paths):
    """(content, mtime) of every file under `paths`: what a rerun would change."""
    state = {}
    for path in paths:
        for f in sorted((root / path).rglob("*")) if (root / path).is_dir() else [root / path]:
            if f.is_file():
                state[str(f.relative_to(root))] = (f.read_bytes(), f.stat().st_mtime_ns)
    return state


def test_adding_a_round_reruns_only_that_round_and_evaluate(project):
    run(["git", "checkout", "--", "."], project)  # back to the baseline commit's workspace
    run(["dvc", "checkout", "--force"], project)
    earlier = ["models/round_0", "models/round_1", "models/round_2", "rounds/round_1", "rounds/round_2"]
    before = file_state(project, earlier)
    assert len(before) > 20

    out = run(["dvc", "exp", "run", "-S", "+rounds.round_3.start=round_2"], project).stdout
    for stage in ("finetune", *ROUND_1, *ROUND_2):
        assert f"Stage '{stage}' didn't change, skipping" in out
    for stage in (*ROUND_3, "evaluate"):
        assert f"Running stage '{stage}'" in out
    assert file_state(project, earlier) == before

    metrics = json.loads((project / "metrics.json").read_text())
    assert list(metrics) == ["final", "round_0", "round_1", "round_2", "round_3"]
    assert metrics["final"] == metrics["round_3"]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    baseline = next(row for row in shown if row["rev"] != "workspace")
    newest = baseline["experiments"][0]["revs"][0]["data"]
    per_round = newest["metrics"]["metrics.json"]["data"]
    assert all({"IS", "TS"} <= set(per_round[f"round_{r}"]) for r in range(4))

    # dvc plots show: the declared plots and the images, in one HTML page
    run(["dvc", "plots", "show", "-o", "plots_html"], project)
    html = (project / "plots_html/index.html").read_text()
    for declared in ("IS-TS trade-off", "logs/dpo/round_1.csv", "logs/dpo/round_3.csv", "logs/finetune.csv",
                     "implicit_accuracy"):
        assert declared in html
    images = sorted(p.name for p in (project / "plots_html/static").iterdir())
    assert images == ["workspace_eval_grids_prompt_00.png", "workspace_eval_grids_prompt_01.png",
                      "workspace_eval_tradeoff.png"]
    from PIL import Image

    with Image.open(project / "eval/grids/prompt_00.png") as grid:  # four rounds side by side
        assert grid.width == 4 * 64 * 2 + 3 * 4


def test_rank_dpo_experiment_beside_the_pairwise_one(project):
    run(["git", "checkout", "--", "."], project)
    run(["dvc", "checkout", "--force"], project)
    out = run(["dvc", "exp", "run", "-n", "rank", "-S", "dpo.loss=rank_dpo", "-S", "pair.mode=rank"], project).stdout
    for stage in ("finetune", "generate@round_1", "score@round_1"):
        assert f"Stage '{stage}' didn't change, skipping" in out
    for stage in ("pair@round_1", "dpo@round_1", *ROUND_2, "evaluate"):
        assert f"Running stage '{stage}'" in out
    ranked = pd.read_parquet(project / "rounds/round_1/preferences/ranked.parquet")
    assert len(ranked) == 8 and sorted(ranked["rank"].unique()) == [1, 2, 3, 4]
    assert not (project / "rounds/round_1/preferences/pairs.parquet").exists()
    log = pd.read_csv(project / "logs/dpo/round_1.csv")
    assert log["loss"].iat[0] > 0 and {"implicit_accuracy", "reward_margin"} <= set(log.columns)

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    baseline = next(row for row in shown if row["rev"] != "workspace")
    runs = {r["name"]: r["data"] for e in baseline["experiments"] for r in e["revs"]}
    losses = {name: d["params"]["params.yaml"]["data"]["dpo"]["loss"] for name, d in runs.items()}
    assert losses["rank"] == "rank_dpo" and "diffusion_dpo" in losses.values()
    for data in (baseline["data"], runs["rank"]):
        assert {"IS", "TS"} <= set(data["metrics"]["metrics.json"]["data"]["final"])
