"""Several concepts in one pipeline, through the real `dvc` CLI: `dbdpo concepts` writes the
stages, one `dvc repro` runs every concept, and DVC reruns only the concept that changed."""

import json

import pytest
import yaml

from tests.test_e2e_dvc import assert_stages, copy_project, fast_params, run

pytestmark = pytest.mark.slow

CONCEPTS = {"toy": {"dir": "data/concept", "token": "sks", "class_noun": "toy"},
            "cup": {"dir": "data/concepts/cup_star", "token": "sks", "class_noun": "cup"}}
STAGES = ("finetune", "generate@round_1", "score@round_1", "pair@round_1", "dpo@round_1", "frontier", "evaluate")


def concept_stages(name: str) -> set[str]:
    """A concept's dvc.yaml addresses: finetune-cup, generate-cup@round_1, ..."""
    return {stage.replace("@", f"-{name}@") if "@" in stage else f"{stage}-{name}" for stage in STAGES}


def changed_stages(root) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], root).stdout))


def set_params(root, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["python", "-m", "stages.concepts"], root)


def test_one_repro_runs_every_concept_and_reruns_only_the_one_that_changed(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    params = fast_params(rounds=1) | {"concepts": CONCEPTS}
    copy_project(root, params)
    run(["python", "-m", "stages.concepts"], root)
    assert run(["python", "-m", "stages.concepts", "--check"], root).returncode == 0

    out = run(["dvc", "repro"], root).stdout
    assert_stages(out, ran=sorted(concept_stages("toy") | concept_stages("cup") | {"summary"}))
    headlines = {name: json.loads((root / "concepts" / name / "metrics.json").read_text()) for name in CONCEPTS}
    assert not (root / "models").exists() and not (root / "eval").exists()  # every artifact under concepts/<name>/
    assert (root / "concepts/cup/models/round_1/pytorch_lora_weights.safetensors").is_file()
    # the two concepts are two runs: their own photos, prompts ("a sks cup") and images
    rounds = {name: json.loads((root / "concepts" / name / "eval/rounds.json").read_text()) for name in CONCEPTS}
    assert rounds["toy"]["round_1"]["IS"] != rounds["cup"]["round_1"]["IS"]
    # metrics.json leads with the mean over the concepts and its standard error across them
    metrics = json.loads((root / "metrics.json").read_text())
    assert list(metrics) == ["count", "mean", "se", "rounds", "concepts"] and metrics["count"] == 2
    assert metrics["concepts"] == headlines
    for figure in ("IS", "TS", "S_0.5_gain", "beyond_frontier"):
        values = [headlines[name][figure] for name in CONCEPTS]
        assert metrics["mean"][figure] == pytest.approx(sum(values) / 2)
        assert metrics["se"][figure] == pytest.approx(abs(values[0] - values[1]) / 2)  # std/sqrt(2), n=2
    assert "S_0.5_gain_se" not in metrics["mean"]  # a concept's own image spread is its row's, not the mean's
    # and every round's, from each concept's eval/rounds.json
    for round_name in ("round_0", "round_1"):
        values = [rounds[name][round_name]["beyond_frontier"] for name in CONCEPTS]
        assert metrics["rounds"][round_name]["mean"]["beyond_frontier"] == pytest.approx(sum(values) / 2)
    assert changed_stages(root) == set()  # every stage wrote what dvc.yaml declares for it
    status = run(["python", "-m", "stages.status"], root).stdout.splitlines()
    assert [line.split()[:2] for line in status[:3]] == [["toy:"], ["round_0", "trained"], ["round_1", "trained"]]
    assert status[3] == "cup:" and status[-1] == "dvc status: up to date"

    # a concept's own key reruns that concept's stages that read it, and the summary; nothing of the other
    changed = json.loads(json.dumps(params))
    changed["concepts"]["cup"]["class_noun"] = "ball"
    set_params(root, changed)
    assert changed_stages(root) == {"finetune-cup", "generate-cup@round_1", "score-cup@round_1", "frontier-cup",
                                    "evaluate-cup", "summary"}

    # adding a concept runs only that concept (and the summary over all three)
    added = json.loads(json.dumps(params))
    added["concepts"]["ball"] = {"dir": "data/concepts/ball_band", "token": "sks", "class_noun": "ball"}
    set_params(root, added)
    assert changed_stages(root) == concept_stages("ball") | {"summary"}
    status = run(["python", "-m", "stages.status"], root).stdout
    assert "ball:\nround_0   not trained" in status and "  finetune-ball " in status and "  summary " in status

    # dvc.yaml out of step with the params: the check and a stage refuse, naming the fix
    (root / "params.yaml").write_text(yaml.safe_dump(params | {"concepts": {"toy": CONCEPTS["toy"]}}, sort_keys=False))
    refused = run(["python", "-m", "stages.concepts", "--check"], root, check=False)
    assert refused.returncode == 2 and "run `dbdpo concepts`" in refused.stderr
    stage = run(["env", "DVC_STAGE=finetune-cup", "python", "-m", "stages.finetune"], root, check=False)
    assert stage.returncode == 2 and "'cup' is not in params.yaml concepts (toy)" in stage.stderr
    assert "run `dbdpo concepts`" in stage.stderr
