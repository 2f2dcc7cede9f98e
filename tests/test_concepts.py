"""Several concepts in one pipeline, without running a model: the params, where each concept's
run lives, the stage names, and the dvc.yaml `dbdpo concepts` writes (tests/test_e2e_concepts.py
runs it)."""

import json
import subprocess
import sys

import pytest
import yaml

from dbdpo.errors import ConfigError
from dbdpo.params import config_from_dict
from stages.concepts import pipeline, render, templates
from stages.layout import Layout
from tests.conftest import REPO, invoke_stage

TWO = {"dog": {"dir": "photos/dog", "token": "sks", "class_noun": "dog"},
       "cat": {"dir": "photos/cat", "token": "zwx", "class_noun": "cat"}}


def repo_params(concepts=None) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if concepts is not None:
        raw["concepts"] = concepts
    return raw


def test_each_concept_replaces_the_concept_groups_folder_token_and_class():
    cfg = config_from_dict(repo_params(TWO))
    assert list(cfg.concepts) == ["dog", "cat"]
    cat = cfg.for_concept("cat")
    assert (cat.concept.dir, cat.concept.token, cat.concept.class_noun) == ("photos/cat", "zwx", "cat")
    assert cat.concept.min_size == cfg.concept.min_size and cat.concepts == {}  # a one-concept config
    assert cfg.for_concept(None) is cfg


def test_a_params_file_written_before_concepts_runs_its_one_concept():
    raw = repo_params()
    del raw["concepts"]
    assert config_from_dict(raw).concepts == {}


@pytest.mark.parametrize("concepts, message", [
    ({"my-dog": TWO["dog"]}, r"concepts.my-dog='my-dog' is invalid: expected a name of letters, digits and _"),
    ({"dog": {"dir": "photos/dog", "class_noun": "dog"}}, r"missing key concepts.dog.token"),
    ({"dog": {**TWO["dog"], "min_size": 8}}, r"unknown key concepts.dog.min_size"),
    ({"dog": {**TWO["dog"], "class_noun": " "}}, r"concepts.dog.class_noun=' ' is invalid: expected a non-empty value"),
    (["dog"], r"concepts: expected a mapping like \{dog: \{dir: data/dog"),
])
def test_a_bad_concept_entry_names_its_key(concepts, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(repo_params(concepts))


def test_a_concepts_run_lives_under_its_folder_and_its_stages_carry_its_name():
    one, dog = Layout(), Layout("dog")
    assert one.model_dir("round_1").as_posix() == "models/round_1" and one.metrics.as_posix() == "metrics.json"
    assert dog.model_dir("round_1").as_posix() == "concepts/dog/models/round_1"
    assert dog.checkpoint_dir("round_0").as_posix() == "concepts/dog/checkpoints/finetune"
    assert dog.baselines.as_posix() == "concepts/dog/eval/baselines"
    assert (one.stage("pair", "round_1"), dog.stage("pair", "round_1"), dog.stage("frontier")) == (
        "pair@round_1", "pair-dog@round_1", "frontier-dog")
    assert (dog.producer("model", "round_0"), dog.producer("model", "round_2"), dog.producer("baselines", None)) == (
        "finetune-dog", "dpo-dog@round_2", "frontier-dog")


def test_the_pipeline_gives_each_concept_its_stages_paths_and_keys():
    template, summary = templates(in_repository=True)
    dvc = pipeline(template, summary, ["dog", "cat"])
    stages = dvc["stages"]
    assert list(stages) == [f"{s}-{c}" for c in ("dog", "cat") for s in template["stages"]] + ["summary"]
    generate = stages["generate-cat"]["do"]
    assert stages["generate-cat"]["foreach"] == "${rounds}"
    assert generate["cmd"] == "python -m stages.generate"  # the concept comes from DVC_STAGE, no param in cmd
    assert generate["deps"][:3] == ["concepts/cat/models/${item.start}", "concepts/cat/models/round_0",
                                    "${generate.prompts}"]
    assert "dbdpo/sampling.py" in generate["deps"]  # the code stays where it is
    assert generate["params"] == ["model", "concepts.cat.token", "concepts.cat.class_noun", "generate", "rounds.${key}"]
    assert generate["outs"] == ["concepts/cat/rounds/${key}/images", "concepts/cat/rounds/${key}/samples.parquet"]
    finetune = stages["finetune-dog"]
    assert "${concepts.dog.dir}" in finetune["deps"] and "${concept.dir}" not in finetune["deps"]
    assert finetune["params"][6:8] == ["concept.min_size", "concepts.dog"]
    assert stages["evaluate-dog"]["metrics"] == [{"concepts/dog/metrics.json": {"cache": False}}]
    assert stages["summary"]["deps"][:4] == ["concepts/dog/metrics.json", "concepts/dog/eval/rounds.json",
                                             "concepts/cat/metrics.json", "concepts/cat/eval/rounds.json"]
    assert stages["summary"]["metrics"] == [{"metrics.json": {"cache": False}}]
    assert stages["summary"]["params"] == ["concepts"]
    titles = [next(iter(p)) if isinstance(p, dict) else p for p in dvc["plots"]]
    assert "cat: DreamBooth: loss per step" in titles and "concepts/dog/eval/grids" in titles
    # no concepts: the one-concept pipeline, its text as shipped
    assert pipeline(template, summary, []) is template
    assert render(template, summary, [], "one") == "one"


def test_a_projects_pipeline_runs_the_installed_commands_without_code_paths():
    template, summary = templates(in_repository=False)
    dvc = pipeline(template, summary, ["dog"])
    assert dvc["stages"]["summary"]["cmd"] == "dbdpo summary"
    assert dvc["stages"]["summary"]["deps"] == ["concepts/dog/metrics.json", "concepts/dog/eval/rounds.json"]
    deps = [d for s in dvc["stages"].values() for d in s.get("do", s).get("deps", [])]
    assert not [d for d in deps if d.startswith(("dbdpo", "stages/"))]


def test_concepts_writes_dvc_yaml_dvc_reads_and_checks_it(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(TWO), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert invoke_stage("concepts", "--check").exit_code == 2  # no dvc.yaml yet
    result = invoke_stage("concepts")
    assert result.exit_code == 0 and "2 concepts (dog, cat) and summary" in result.output
    assert invoke_stage("concepts", "--check").exit_code == 0
    subprocess.run(["dvc", "init", "--no-scm", "-q"], check=True)
    code = ("import json; from dvc.repo import Repo; r = Repo('.'); "
            "print(json.dumps({s.addressing: sorted(d.def_path for d in s.deps) for s in r.index.stages}))")
    stages = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert "dpo-cat@round_2" in stages and "concepts/cat/models/round_1" in stages["dpo-cat@round_2"]
    assert "photos/dog" in stages["score-dog@round_1"]  # the concept's folder, from its params entry
    # back to one concept: the one-concept pipeline, and a note on the folder no concept owns now
    (tmp_path / "concepts/cat").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"dog": TWO["dog"]}), sort_keys=False))
    result = invoke_stage("concepts")
    assert "concepts/{cat} belong to no concept now" in result.output


def test_a_stage_runs_the_concept_dvc_names_and_refuses_one_params_does_not_list(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(TWO), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "pair-cow@round_1")
    result = invoke_stage("pair")
    assert result.exit_code == 2 and "concept 'cow' is not in params.yaml concepts (dog, cat)" in result.output
    assert "run `dbdpo concepts`" in result.output
    monkeypatch.setenv("DVC_STAGE", "pair@round_1")  # a one-concept dvc.yaml beside params with concepts
    result = invoke_stage("pair")
    assert result.exit_code == 2 and "params.yaml lists concepts (dog, cat)" in result.output
    monkeypatch.delenv("DVC_STAGE")
    result = invoke_stage("pair", "--round", "round_1", "--concept", "cat")  # a hand run: its inputs, named
    assert result.exit_code == 2 and "concepts/cat/rounds/round_1/scores.parquet" in result.output


def test_summary_writes_the_mean_over_the_concepts_first(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(TWO), sort_keys=False))
    for name, value in (("dog", 0.25), ("cat", 0.75)):
        (tmp_path / "concepts" / name).mkdir(parents=True)
        (tmp_path / "concepts" / name / "metrics.json").write_text(json.dumps({"IS": value, "IS_se": 0.1}))
        # every round's figures too, as evaluate writes them (its stds, counts and errors are not averaged)
        (tmp_path / "concepts" / name / "eval").mkdir()
        (tmp_path / "concepts" / name / "eval/rounds.json").write_text(json.dumps({
            "round_0": {"IS": value - 0.25, "IS_std": 0.4, "images": 40, "beyond_frontier": -value},
            "round_1": {"IS": value, "IS_std": 0.4, "images": 40, "IS_gain": 2 * value, "IS_gain_se": 0.1,
                        "S_0.3_gain": value, "beyond_frontier": value}}))
    monkeypatch.chdir(tmp_path)
    result = invoke_stage("summary")
    assert result.exit_code == 0, result.output
    assert [line.split("|")[0].strip() for line in result.output.splitlines()[:3]] == ["concept", "dog", "cat"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"count": 2, "mean": {"IS": 0.5}, "se": {"IS": 0.25},
                       "rounds": {"round_0": {"mean": {"IS": 0.25, "beyond_frontier": -0.5},
                                              "se": {"IS": 0.25, "beyond_frontier": 0.25}},
                                  "round_1": {"mean": {"IS": 0.5, "IS_gain": 1.0, "S_0.3_gain": 0.5,
                                                       "beyond_frontier": 0.5},
                                              "se": {"IS": 0.25, "IS_gain": 0.5, "S_0.3_gain": 0.25,
                                                     "beyond_frontier": 0.25}}},
                       "concepts": {"dog": {"IS": 0.25, "IS_se": 0.1}, "cat": {"IS": 0.75, "IS_se": 0.1}}}
    # under dvc repro, params listing a concept dvc.yaml has no stages for (`dvc exp run -S`)
    assert invoke_stage("concepts").exit_code == 0
    monkeypatch.setenv("DVC_STAGE", "summary")
    assert invoke_stage("summary").exit_code == 0
    three = {**TWO, "cow": {"dir": "photos/cow", "token": "sks", "class_noun": "cow"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(three), sort_keys=False))
    result = invoke_stage("summary")
    assert result.exit_code == 2 and "run `dbdpo concepts` to rewrite it" in result.output
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(TWO), sort_keys=False))
    monkeypatch.delenv("DVC_STAGE")
    # concepts that ran different rounds are not averaged round by round
    (tmp_path / "concepts/cat/eval/rounds.json").write_text(json.dumps({"round_0": {"IS": 0.5}}))
    result = invoke_stage("summary")
    assert result.exit_code == 2 and "name different rounds (round_0 against round_0, round_1)" in result.output


DATASET_TABLE = """Classes

subject_name,class
backpack_dog,backpack
bear_plushie,stuffed animal

Prompts
prompt_list = ['a {0} {1} in the jungle'.format(unique_token, class_token)]
"""


def test_a_dreambooth_dataset_folder_becomes_the_concepts(tmp_path, monkeypatch):
    """The dataset's layout (a folder per subject, prompts_and_classes.txt): its subjects become
    params.yaml's concepts, the file's other lines and comments kept, and dvc.yaml follows."""
    dataset = tmp_path / "dreambooth" / "dataset"
    for subject in ("backpack_dog", "bear_plushie"):
        (dataset / subject).mkdir(parents=True)
    (dataset / "prompts_and_classes.txt").write_text(DATASET_TABLE)
    before = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(before)
    monkeypatch.chdir(tmp_path)
    result = invoke_stage("concepts", "--dreambooth-dataset", "dreambooth/dataset", "--token", "zwx")
    assert result.exit_code == 0, result.output
    after = (tmp_path / "params.yaml").read_text()
    assert yaml.safe_load(after)["concepts"] == {
        "backpack_dog": {"dir": "dreambooth/dataset/backpack_dog", "token": "zwx", "class_noun": "backpack"},
        "bear_plushie": {"dir": "dreambooth/dataset/bear_plushie", "token": "zwx", "class_noun": "stuffed animal"}}
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert changed == [
        "concepts:",
        '  backpack_dog: {dir: "dreambooth/dataset/backpack_dog", token: "zwx", class_noun: "backpack"}',
        '  bear_plushie: {dir: "dreambooth/dataset/bear_plushie", token: "zwx", class_noun: "stuffed animal"}']
    assert "finetune-bear_plushie" in yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]

    # a subject without its folder, or a file that is not the table: named, params.yaml untouched
    (dataset / "prompts_and_classes.txt").write_text(DATASET_TABLE.replace("bear_plushie,", "cat2,"))
    result = invoke_stage("concepts", "--dreambooth-dataset", "dreambooth/dataset")
    assert result.exit_code == 2 and "no photo folder for subject cat2" in result.output
    (dataset / "prompts_and_classes.txt").write_text("subject,class\n")
    result = invoke_stage("concepts", "--dreambooth-dataset", "dreambooth/dataset")
    assert result.exit_code == 2 and "no 'subject_name,class' header line" in result.output
    assert (tmp_path / "params.yaml").read_text() == after


def test_dbdpo_check_names_each_concepts_photos_and_a_pipeline_out_of_step(tmp_path, monkeypatch):
    import shutil

    shutil.copytree(REPO / "data/concept", tmp_path / "photos/dog")  # cat's folder is missing
    shutil.copytree(REPO / "data/prompts", tmp_path / "data/prompts")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(TWO), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert invoke_stage("concepts").exit_code == 0
    result = invoke_stage("check")
    assert result.exit_code == 1 and "concepts.cat.dir" in result.stderr and "concepts.dog.dir" not in result.stderr
    shutil.copytree(REPO / "data/concept", tmp_path / "photos/cat")
    assert invoke_stage("check").exit_code == 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"dog": TWO["dog"]}), sort_keys=False))
    result = invoke_stage("check")  # dvc.yaml still runs cat
    assert result.exit_code == 1 and "dvc.yaml is not the pipeline for params.yaml's concepts (dog)" in result.stderr


def test_compose_tradeoffs_puts_each_concepts_figure_under_its_name(tmp_path):
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("compose_tradeoffs", REPO / "scripts/compose_tradeoffs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(TWO), sort_keys=False))
    (tmp_path / "concepts/dog/eval").mkdir(parents=True)
    Image.new("RGB", (50, 40), "red").save(tmp_path / "concepts/dog/eval/tradeoff.png")
    with pytest.raises(SystemExit, match="concepts/cat/eval/tradeoff.png is missing"):
        script.compose(tmp_path)
    (tmp_path / "concepts/cat/eval").mkdir(parents=True)
    Image.new("RGB", (50, 40), "blue").save(tmp_path / "concepts/cat/eval/tradeoff.png")
    sheet = script.compose(tmp_path)
    assert sheet.size == (100, 40 + script.LABEL_HEIGHT)
    assert sheet.getpixel((10, script.LABEL_HEIGHT + 5)) == (255, 0, 0)  # dog first, as params lists it
    assert sheet.getpixel((60, script.LABEL_HEIGHT + 5)) == (0, 0, 255)
