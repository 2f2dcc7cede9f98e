"""The pipeline through the real `dvc` CLI, in a project `dbdpo init` wrote from the installed wheel.

The tests of this module share one one-round project, written, built and committed once per
process by the `project` fixture (`dbdpo init`, then `dvc repro` with the wheel's `dbdpo` as
every stage's command: the user's path, no clone of this repository on it); every test that
changes it starts from that committed baseline (`baseline`), so each test runs alone or in any
order, on any xdist worker. A stage subprocess costs ~6 s of Python imports alone, so where the
dvc CLI is not what a test checks, it runs dvc.yaml's stage commands in-process.
"""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
import yaml

from dbdpo.across_concepts import summarize
from tests.conftest import REPO, invoke_stage

pytestmark = pytest.mark.slow

# Small enough for CI, big enough that every stage does real work.
FAST_PARAMS = {
    "finetune": {"steps": 20, "batch_size": 1, "lora_rank": 4},
    "generate": {"num_prompts": 2, "images_per_prompt": 4, "steps": 4},
    "filter": {"angle": 60},
    "dpo": {"steps": 4, "batch_size": 2},
    "evaluate": {"num_prompts": 2, "images_per_prompt": 1, "steps": 4, "grid_prompts": 2},
    "frontier": {"lora_scales": [0.5], "guidance_scales": [4.0], "finetune_fractions": [0.5]},
}
ROUND_1 = ("generate@round_1", "score@round_1", "pair@round_1", "dpo@round_1")
ROUND_2 = ("generate@round_2", "score@round_2", "pair@round_2", "dpo@round_2")
OUTPUTS = ("models", "rounds", "eval", "logs", "metrics.json", "dvc.lock")


def run(args, cwd, check=True):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def assert_stages(out: str, ran=(), skipped=()):
    """`dvc repro` / `exp run` output ran exactly `ran` and left `skipped` untouched."""
    ran_missing = [s for s in ran if f"Running stage '{s}'" not in out]
    not_skipped = [s for s in skipped if f"Stage '{s}' didn't change, skipping" not in out]
    assert not ran_missing and not not_skipped, (
        f"should have run: {ran_missing}; should have skipped: {not_skipped}\n--- dvc output ---\n{out}")


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


def fast_params(rounds: int = 1, source=REPO / "params.yaml") -> dict:
    """`source`'s params at FAST_PARAMS' sizes, with `rounds` rounds."""
    params = yaml.safe_load(source.read_text())
    for group, values in FAST_PARAMS.items():
        params[group].update(values)
    params["rounds"] = {f"round_{r}": {"start": f"round_{r - 1}"} for r in range(1, rounds + 1)}
    return params


def run_stages_in_process(project, monkeypatch, stages) -> None:
    """Each of `stages` (dvc.yaml addresses: "finetune", "pair@round_1", "pair-dog@round_1") as
    `dvc repro` runs it: dvc.yaml's command for it (`python -m stages.<name>` in a copy of this
    repository, `dbdpo <name>` in a project `dbdpo init` wrote), as its Typer app in this
    process, in the project folder, with DVC_STAGE naming the round (and the concept)."""
    dvc_yaml = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    monkeypatch.chdir(project)
    for stage in stages:
        name = stage.partition("@")[0]
        command = name.partition("-")[0]  # a concept's stage (finetune-dog) runs finetune
        assert dvc_yaml[name].get("do", dvc_yaml[name])["cmd"] in (f"python -m stages.{command}", f"dbdpo {command}")
        monkeypatch.setenv("DVC_STAGE", stage)
        result = invoke_stage(command)
        assert result.exit_code == 0, f"{stage}: {result.output}\n{result.exception!r}"


def digests(root) -> dict[str, str]:
    """md5 of every file the pipeline wrote."""
    out = {}
    for name in OUTPUTS:
        path = root / name
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def back_to_baseline(root) -> None:
    """The committed baseline's params, lock and outputs in the workspace, and nothing else
    git would see, verified.

    The git index is rebuilt first: a failed `dvc exp run` (DVC 3.67) on a workspace that
    differs from HEAD leaves index entries whose stat data matches the workspace file but whose
    blob is HEAD's, so git sees e.g. logs/dpo/round_1/metrics.json as clean, `git checkout -- .` keeps
    the experiment's copy, and DVC then reruns dpo@round_1 for a "modified" output.
    """
    (root / ".git/index").unlink()
    run(["git", "reset", "-q", "--hard", "HEAD"], root)
    run(["git", "clean", "-qfd"], root)  # what a test added (a round's folder, weight files); not ignored outputs
    run(["dvc", "checkout", "--force"], root)
    status = run(["dvc", "status"], root).stdout
    assert "Data and pipelines are up to date" in status, status


def experiment_runs(root) -> tuple[dict, dict[str, dict]]:
    """`dvc exp show --json`: the baseline commit's data and each experiment's, by name."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    baseline = next(row for row in shown if row["rev"] != "workspace")
    return baseline["data"], {r["name"]: r["data"] for e in baseline["experiments"] for r in e["revs"]}


@pytest.fixture(scope="module")
def wheel_on_path(installed):
    """Every subprocess of this module (dvc, its queue workers, the stages they run) finds the
    installed wheel's `dbdpo` and imports its code, not this checkout's."""
    _, env = installed
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", env["PATH"])
        patch.setenv("PYTHONPATH", env["PYTHONPATH"])
        yield


@pytest.fixture(scope="module")
def fresh_repro(tmp_path_factory, wheel_on_path):
    """(the project, the output of its first `dvc repro`), the run committed as the baseline:
    `dbdpo init` with the toy's photos, then one round at FAST_PARAMS' sizes."""
    root = tmp_path_factory.mktemp("e2e") / "my-toy"
    run(["dbdpo", "init", root.name, "--concept", str(REPO / "data/concept"), "--class-noun", "toy"], root.parent)
    (root / "params.yaml").write_text(yaml.safe_dump(fast_params(source=root / "params.yaml"), sort_keys=False))
    run(["git", "commit", "-qam", "CI sizes"], root)
    out = run(["dvc", "repro"], root).stdout
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "baseline"], root)
    return root, out


@pytest.fixture(scope="module")
def project(fresh_repro):
    return fresh_repro[0]


@pytest.fixture
def baseline(project):
    """The project at its committed baseline, whatever an earlier test left in the workspace."""
    back_to_baseline(project)
    return project


def test_repro_writes_every_artifact(fresh_repro):
    project, first = fresh_repro
    assert_stages(first, ran=("finetune", *ROUND_1, "frontier", "evaluate"))
    assert "> dbdpo finetune" in first and "> dbdpo dpo" in first  # the wheel's command, not python -m stages

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
    assert list(pd.read_parquet(project / "rounds/round_1/preferences/pickapic/train.parquet").columns) == [
        "jpg_0", "jpg_1", "label_0", "caption"]
    rounds = json.loads((project / "eval/rounds.json").read_text())
    assert list(rounds) == ["round_0", "round_1"] and rounds["round_1"]["images"] == 2
    metrics = json.loads((project / "metrics.json").read_text())  # the headline: the last round's
    assert list(metrics) == ["IS", "TS", "IS_gain", "TS_gain", "S_0.5_gain", "S_0.5_gain_se", "beyond_frontier"]
    assert metrics == {k: rounds["round_1"][k] for k in metrics}
    # `dbdpo summary` reads the headline evaluate wrote; one concept has no spread across concepts
    summary = summarize([project])
    assert summary["concepts"] == {str(project): metrics} and summary["mean"]["IS"] == {"mean": metrics["IS"], "se": None}
    # the baselines: round 0 at LoRA scale 0.5 and at guidance 4, and DreamBooth after half its
    # 20 steps (finetune's early stop, a LoRA diffusers loads), on evaluate's prompts and seeds
    early = json.loads((project / "models/early_stops/early_stops.json").read_text())
    assert early == {"finetune_steps": 20, "early_stops": {"steps_10": 10}}
    assert (project / "models/early_stops/steps_10/pytorch_lora_weights.safetensors").is_file()
    baselines = pd.read_parquet(project / "eval/baselines/scores.parquet")
    round_0 = pd.read_parquet(project / "eval/scores.parquet").query("round == 'round_0'")
    assert list(baselines["round"].unique()) == ["lora_scale_0.5", "guidance_4", "steps_10"]
    for _, rows in baselines.groupby("round"):
        assert rows[["prompt_id", "seed"]].values.tolist() == round_0[["prompt_id", "seed"]].values.tolist()
    frontier = json.loads((project / "eval/frontier.json").read_text())
    assert list(frontier) == ["round_0", "lora_scale_0.5", "guidance_4", "steps_10"]
    assert frontier["guidance_4"]["IS"] == pytest.approx(baselines.loc[baselines["round"] == "guidance_4", "IS"].mean())
    assert rounds["round_0"]["beyond_frontier"] <= 0  # round 0 is a point of its own frontier
    assert "IS_gain" not in rounds["round_0"]
    # the headline TS is the authors' ("a in the jungle"); the with-class form is its own column, once
    assert "TS_without_concept" not in rounds["round_1"] and rounds["round_1"]["TS"] != rounds["round_1"]["TS_with_class"]
    assert sorted(p.name for p in (project / "eval/grids").iterdir()) == ["prompt_00.png", "prompt_01.png"]
    assert not list(project.rglob(".tmp-*"))


def test_noop_then_rerun_writes_the_same_bytes(baseline, monkeypatch):
    """Otherwise dvc.lock changes on a forced rerun and DVC reruns everything downstream for
    nothing (the LoRA's safetensors metadata order did exactly that about half the time).
    The rerun is every stage's command in-process: the bytes are the stages' business."""
    project = baseline
    second = run(["dvc", "repro"], project).stdout
    assert "Data and pipelines are up to date" in second and "Running stage" not in second, second

    first = digests(project)
    assert len(first) > 20 and "models/round_1/pytorch_lora_weights.safetensors" in first
    run_stages_in_process(project, monkeypatch, ("finetune", *ROUND_1, "frontier", "evaluate"))
    again = digests(project)
    assert sorted(k for k in first.keys() | again.keys() if first.get(k) != again.get(k)) == []
    status = run(["dvc", "status"], project).stdout
    assert "Data and pipelines are up to date" in status, status
    assert run(["git", "status", "--porcelain"], project).stdout == ""  # the committed bytes, again


def test_a_pushed_run_is_pulled_by_a_second_clone_and_not_recomputed(baseline, tmp_path):
    """A shared remote (here a folder; s3://, gs://, ssh:// alike): what one machine computed,
    another pulls, and `dvc repro` there has nothing to run."""
    project = baseline
    store = tmp_path / "store"
    run(["dvc", "remote", "add", "--local", "store", str(store)], project)  # .dvc/config.local: git-ignored
    run(["dvc", "push", "-r", "store"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "store", str(store)], clone)
    run(["dvc", "pull", "-r", "store"], clone)
    assert digests(clone) == digests(project)
    out = run(["dvc", "repro"], clone).stdout
    assert "Data and pipelines are up to date" in out and "Running stage" not in out, out


def queued_names(root) -> list[str]:
    """The queue's experiments, as `dvc queue status` lists them (name first on each task row)."""
    rows = run(["dvc", "queue", "status"], root).stdout.splitlines()[1:]
    return [row.split()[1] for row in rows if row.split() and row.split()[-1] in ("Success", "Failed")]


def test_a_queued_lambda_sweep_runs_on_two_workers_reusing_the_sampled_rounds(baseline):
    """`dvc exp run --queue -S 'pair.lambda=0,0.5,1'`, `dvc queue start -j 2`: three
    experiments, each pairing the same cached samples and scores anew."""
    project = baseline
    run(["dvc", "exp", "run", "--queue", "-S", "pair.lambda=0,0.5,1"], project)
    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 600
    while len(queued_names(project)) < 3:
        assert time.monotonic() < deadline, run(["dvc", "queue", "status"], project).stdout
        time.sleep(5)  # each look starts a `dvc` process, which takes a core from the queue's workers
    run(["dvc", "queue", "stop", "--kill"], project, check=False)
    status = run(["dvc", "queue", "status"], project).stdout
    assert "Failed" not in status, status
    baseline_data, every_run = experiment_runs(project)
    runs = {name: every_run[name] for name in queued_names(project)}  # not another test's experiments

    def final(data):
        return data["metrics"]["metrics.json"]["data"]

    def lam(data):
        return data["params"]["params.yaml"]["data"]["pair"]["lambda"]

    assert sorted(lam(data) for data in runs.values()) == [0, 0.5, 1]
    for name in queued_names(project):
        log = run(["dvc", "queue", "logs", name], project).stdout
        reused = ("finetune", "generate@round_1", "score@round_1")
        assert all(f"Stage '{s}' didn't change, skipping" in log or f"Stage '{s}' is cached" in log
                   for s in reused), log
    by_lambda = {lam(data): final(data) for data in runs.values()}
    assert by_lambda[0.5] == final(baseline_data)  # the baseline's params: every stage cached
    assert by_lambda[0] != by_lambda[1]  # other pairs, another model
    committed = json.loads(run(["git", "show", "HEAD:metrics.json"], project).stdout)
    assert final(baseline_data) == committed
    # the headline metrics are the first columns after the experiment's own (rev, State, ...)
    header = run(["dvc", "exp", "show", "--csv"], project).stdout.splitlines()[0].split(",")
    first = header.index("IS")
    assert header[first:first + 6] == ["IS", "TS", "IS_gain", "TS_gain", "S_0.5_gain", "S_0.5_gain_se"], header
    assert not any("." in name for name in header[:first]), header


def test_bad_param_fails_before_the_stage_works(baseline):
    # `baseline` must survive what a failed `exp run` leaves behind (back_to_baseline)
    result = run(["dvc", "exp", "run", "-S", "pair.lambda=1.5"], baseline, check=False)
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


def test_adding_a_round_reruns_only_that_round_and_evaluate(baseline):
    project = baseline
    earlier = ["models/round_0", "models/round_1", "rounds/round_1"]
    before = file_state(project, earlier)
    assert len(before) > 10

    out = run(["dvc", "exp", "run", "-S", "+rounds.round_2.start=round_1"], project).stdout
    assert_stages(out, ran=(*ROUND_2, "evaluate"), skipped=("finetune", *ROUND_1, "frontier"))
    assert file_state(project, earlier) == before

    rounds = json.loads((project / "eval/rounds.json").read_text())
    assert list(rounds) == ["round_0", "round_1", "round_2"]
    assert json.loads((project / "metrics.json").read_text())["S_0.5_gain"] == rounds["round_2"]["S_0.5_gain"]
    # round 2 sampled the next slice of the prompt pool, from the round-1 model
    r1 = pd.read_parquet(project / "rounds/round_1/samples.parquet")
    r2 = pd.read_parquet(project / "rounds/round_2/samples.parquet")
    assert len(r2) == 8 and not set(r2["template"]) & set(r1["template"])

    # dvc plots show: the declared plots and the images, in one HTML page
    run(["dvc", "plots", "show", "-o", "plots_html"], project)
    html = (project / "plots_html/index.html").read_text()
    # the page opens offline: Vega inlined (.dvc/plots/offline.html), no script from a CDN
    assert "<script src=" not in html and "cdn.jsdelivr" not in html and html.count("vegaEmbed(") >= 5
    assert '"text": {"field": "round", "type": "nominal"}' in html  # each point of the scatter named
    assert '"order": {"field": "round", "type": "ordinal"}' in html  # and joined in round order
    # a few titled panels (dvc.yaml's plots:), not one per DVCLive file titled by its path
    titles = re.findall(r'"title": \{"text": "([^"]*)"', html)
    assert [t.split(" (")[0].split(":")[0] for t in titles] == [
        "IS-TS trade-off per round", "DreamBooth", "DreamBooth health", "DPO", "DPO", "DPO"], titles
    # the policy's and the reference's error of both rounds on one axis: one panel, four series
    panel = html[html.index('"DPO: denoising error of the policy'):]
    panel = panel[:panel.index("vegaEmbed(")]
    assert all(f"round_{r}/plots/metrics/{q}.tsv" in panel for r in (1, 2) for q in ("policy_error", "reference_error"))
    images = sorted(p.name for p in (project / "plots_html/static").iterdir())
    assert images == ["workspace_eval_grids_prompt_00.png", "workspace_eval_grids_prompt_01.png",
                      "workspace_eval_tradeoff.png"]
    from PIL import Image

    with Image.open(project / "eval/grids/prompt_00.png") as grid:  # a concept photo, then three rounds
        assert grid.width == 4 * 64 * 2 + 3 * 4


def test_other_early_stops_rerun_finetune_the_frontier_and_evaluate_and_no_round(baseline):
    """finetune keeps the early stops beside round 0, not inside it: other fractions rewrite
    models/early_stops and round 0 with the same bytes, so DVC reruns no round."""
    project = baseline
    round_0 = (project / "models/round_0/pytorch_lora_weights.safetensors").read_bytes()
    out = run(["dvc", "exp", "run", "-S", "frontier.finetune_fractions=[0.25]"], project).stdout
    assert_stages(out, ran=("finetune", "frontier", "evaluate"), skipped=ROUND_1)
    assert (project / "models/round_0/pytorch_lora_weights.safetensors").read_bytes() == round_0
    early = json.loads((project / "models/early_stops/early_stops.json").read_text())
    assert early == {"finetune_steps": 20, "early_stops": {"steps_5": 5}}
    assert list(json.loads((project / "eval/frontier.json").read_text())) == [
        "round_0", "lora_scale_0.5", "guidance_4", "steps_5"]


def test_rank_dpo_round_with_hpsv2_and_aesthetic_rewards_in_the_ensemble(baseline, monkeypatch):
    """RankDPO through the stages (pair writes ranked lists, dpo trains on them) with HPS and
    Aesthetic in the ensemble: tiny open_clip CLIPs saved in the released files' layouts stand
    in for HPSv2's ViT-H-14 and for ViT-L-14 under LAION's aesthetic MLP. score, pair, dpo
    and evaluate run in-process on the rank params."""
    import torch

    from dbdpo.scoring import TINY_CLIP, AestheticMlp, load_open_clip

    project = baseline
    for name, seed in (("hps.pt", 5), ("clip.pt", 6)):
        clip, _, _ = load_open_clip("tiny", None, seed=seed)
        torch.save({"state_dict": clip.state_dict()}, project / name)
    torch.save(AestheticMlp(clip.visual.output_dim).state_dict(), project / "aesthetic.pth")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pair"]["mode"], params["dpo"]["loss"] = "rank", "rank_dpo"
    params["score"].update(hps_weights="hps.pt", hps_arch=TINY_CLIP, aesthetic_weights="aesthetic.pth",
                           aesthetic_clip=TINY_CLIP, aesthetic_clip_pretrained="clip.pt",
                           rewards={"IS": 1.0, "TS": 1.0, "HPS": 1.0, "Aesthetic": 1.0})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stages_in_process(project, monkeypatch, ("score@round_1", "pair@round_1", "dpo@round_1", "evaluate"))

    scores = pd.read_parquet(project / "rounds/round_1/scores.parquet")
    assert {"IS", "TS", "HPS", "Aesthetic"} <= set(scores.columns) and scores["HPS"].between(-1, 1).all()
    assert scores["Aesthetic"].map(math.isfinite).all() and scores["Aesthetic"].nunique() == len(scores)
    ranked = pd.read_parquet(project / "rounds/round_1/preferences/ranked.parquet")
    assert len(ranked) == 8 and sorted(ranked["rank"].unique()) == [1, 2, 3, 4]
    assert not (project / "rounds/round_1/preferences/pairs.parquet").exists()
    logs = project / "logs/dpo/round_1/plots/metrics"
    loss = pd.read_csv(logs / "loss.tsv", sep="\t")
    assert list(loss.columns) == ["step", "loss"] and loss["loss"].iat[0] > 0
    assert loss["step"].to_list() == list(range(FAST_PARAMS["dpo"]["steps"]))  # every step, in order
    assert {"implicit_accuracy.tsv", "reward_margin.tsv"} <= {p.name for p in logs.iterdir()}
    metrics = json.loads((project / "eval/rounds.json").read_text())
    committed = json.loads(run(["git", "show", "HEAD:eval/rounds.json"], project).stdout)
    extra = ("HPS", "HPS_std", "Aesthetic", "Aesthetic_std")
    assert metrics["round_0"] == committed["round_0"] | {key: metrics["round_0"][key] for key in extra}
    assert -1 <= metrics["round_0"]["HPS"] <= 1  # the same DreamBooth model and seeds, one more column
    assert metrics["round_1"]["IS"] != committed["round_1"]["IS"]  # another round-1 model


def test_a_killed_dpo_stage_resumes_to_the_model_an_uninterrupted_run_writes(baseline):
    """SIGKILL dpo@round_1 once it has saved a checkpoint (dpo.checkpoint_every); `dvc repro`
    then resumes from it and writes, byte for byte, the LoRA an uninterrupted run writes."""
    project = baseline
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dpo"].update(steps=12, checkpoint_every=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lora = project / "models/round_1/pytorch_lora_weights.safetensors"
    saved = project / "checkpoints/dpo/round_1/state.safetensors"
    run(["dvc", "repro", "dpo@round_1"], project)
    uninterrupted = lora.read_bytes()
    assert not saved.parent.exists()  # a finished run leaves no checkpoint

    # the stage's own command, as dvc.yaml runs it, in its own process group to kill it whole
    stage = subprocess.Popen(["dbdpo", "dpo", "--round", "round_1"], cwd=project,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not saved.is_file() and stage.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(stage.pid, signal.SIGKILL)
    assert stage.wait() == -signal.SIGKILL and saved.is_file() and not lora.exists()
    status = run(["dbdpo", "status"], project).stdout
    assert re.search(r"round_1 +not trained +held-out IS [\d.]+ +TS [\d.]+ dpo stopped after step \d+ of 12 "
                     r"\(checkpoints/dpo/round_1; dvc repro resumes there\)", status), status
    assert re.search(r"dvc repro would run:\n  dpo@round_1 +outs: models/round_1 deleted", status), status

    out = run(["dvc", "repro", "dpo@round_1"], project)
    assert "resuming from the checkpoint after step" in out.stdout + out.stderr
    assert lora.read_bytes() == uninterrupted
    assert not saved.parent.exists()
