"""dvc.yaml's wiring, read by DVC itself (no stage runs): what each stage depends on."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


def stage_deps(root) -> dict[str, set[str]]:
    """Every stage of the project at `root` -> the paths DVC watches for it."""
    code = ("import json, sys; from dvc.repo import Repo; r = Repo('.'); "
            "print(json.dumps({s.addressing: [d.fs_path for d in s.deps] for s in r.index.stages}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    return {name: set(paths) for name, paths in yaml.safe_load(out).items()}


def module_file(name: str) -> str | None:
    """The source file of a dbdpo / stages module or package, relative to the repository."""
    for path in (name.replace(".", "/") + ".py", name.replace(".", "/") + "/__init__.py"):
        if (REPO / path).is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """The dbdpo / stages modules a file imports anywhere in it (a stage imports at call time),
    with the packages they are in (whose __init__ runs first)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("dbdpo", "stages"):
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.split(".")[0] in ("dbdpo", "stages")}
    names |= {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 1)}
    return {name for name in names if module_file(name)}


def code_of(stage: str) -> set[str]:
    """Every source file `python -m stages.<stage>` can run: the closure of its imports."""
    seen, todo = set(), [f"stages.{stage}", "stages"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(REPO / module_file(name))
    return {module_file(name) for name in seen}


MODEL_STAGES = {"finetune", "generate", "score", "dpo", "frontier", "evaluate"}  # they load the world's weights and configs


@pytest.mark.parametrize("stage", ["finetune", "generate", "score", "pair", "dpo", "frontier", "evaluate"])
def test_each_stage_depends_on_exactly_the_code_it_imports(stage):
    """A stage depended on the whole dbdpo/ folder, so a docstring edit in the proving ground's
    renderer reran DreamBooth and everything after it. Now its code deps are the closure of its
    imports (and the shipped weights for the stages that load a model), derived here."""
    config = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    deps = config.get("do", config)["deps"]
    code = {d for d in deps if d.startswith(("dbdpo", "stages/"))}
    expected = code_of(stage) | ({"dbdpo/world/assets", "dbdpo/configs"} if stage in MODEL_STAGES else set())
    assert code == expected, f"dvc.yaml {stage} code deps should be: {sorted(expected)}"
    # the proving ground's renderer, contexts, concept set and quality gates rerun nothing
    assert not code & {"dbdpo/world/scenes.py", "dbdpo/world/contexts.py", "dbdpo/world/concepts.py",
                        "dbdpo/world/data.py", "dbdpo/world/quality.py"}


def test_the_summary_stage_depends_on_exactly_the_code_it_imports():
    """The several-concept pipeline's summary stage (stages/init_files/summary.yaml, which
    `dbdpo concepts` adds to dvc.yaml), derived as the other stages' code deps are."""
    config = yaml.safe_load((REPO / "stages/init_files/summary.yaml").read_text())["summary"]
    code = {d for d in config["deps"] if d.startswith(("dbdpo", "stages/"))}
    assert code == code_of("summary"), f"summary.yaml's code deps should be: {sorted(code_of('summary'))}"


def test_a_concept_dir_outside_the_repo_is_a_dependency(tmp_path):
    """`dvc exp run -S concept.dir=/data/my_dog`: replacing those photos must rerun what reads them."""
    project, photos = tmp_path / "project", tmp_path / "my_dog"
    project.mkdir()
    photos.mkdir()
    (project / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["concept"]["dir"] = str(photos)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, check=True)

    deps = stage_deps(project)
    readers = {name for name, paths in deps.items() if str(photos) in paths}
    assert readers == {"finetune", "score@round_1", "score@round_2", "frontier", "evaluate"}
    assert not any(str(REPO / "data/concept") in paths or str(project / "data/concept") in paths
                   for paths in deps.values())


def test_the_prompt_files_the_params_name_are_dependencies(tmp_path):
    """`-S generate.prompts=data/prompts/pool_object.txt`: a new pool reruns generate (and what
    follows), a new evaluation set reruns evaluate; the other prompt files are nobody's input."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"]["prompts"] = "prompts/mine.txt"
    params["evaluate"]["prompts"] = "prompts/held_out.txt"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, check=True)

    deps = stage_deps(project)
    readers = {path: {name for name, paths in deps.items() if str(project / path) in paths}
               for path in ("prompts/mine.txt", "prompts/held_out.txt")}
    assert readers == {"prompts/mine.txt": {"generate@round_1", "generate@round_2"},
                       "prompts/held_out.txt": {"frontier", "evaluate"}}
    assert not any("data/prompts" in path for paths in deps.values() for path in paths)


def test_no_params_value_reaches_a_shell_command(tmp_path):
    """A hostile round name (`dvc exp run -S`, a pulled params.yaml) must not run as shell: DVC
    pastes `${...}` into cmd unquoted, so no cmd templates a param; rounds come from DVC_STAGE."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    hostile = "round_2'; touch pwned; '"
    params["rounds"] = {"round_1": {"start": "round_0"}, hostile: {"start": "round_1"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    code = ("import json; from dvc.repo import Repo; r = Repo('.'); "
            "print(json.dumps({s.addressing: s.cmd for s in r.index.stages}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, check=True)
    cmds = yaml.safe_load(out.stdout)
    assert f"generate@{hostile}" in cmds  # DVC did make a stage of it
    assert {name: cmd for name, cmd in cmds.items()} == {name: f"python -m stages.{name.split('@')[0]}"
                                                          for name in cmds}


@pytest.mark.parametrize("stage", ["finetune", "generate", "score", "pair", "dpo", "frontier", "evaluate"])
def test_dvc_yaml_lists_exactly_the_params_each_stage_may_read(stage):
    """A stage reads its params through a view that refuses any key outside its READS
    (dbdpo.params.ParamView), so READS equal to dvc.yaml's list means DVC reruns a stage on
    every key it uses and on no other: `-S model.precision=fp16` does not rerun finetune."""
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    assert tuple(declared.get("do", declared)["params"]) == importlib.import_module(f"stages.{stage}").READS


def test_every_declared_key_exists_in_params(in_repo):
    """A typo in READS (or dvc.yaml) would make DVC watch nothing for it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage in ("finetune", "generate", "score", "pair", "dpo", "frontier", "evaluate"):
        for key in importlib.import_module(f"stages.{stage}").READS:
            node = params
            for part in key.replace("${key}", "round_1").split("."):
                assert isinstance(node, dict) and part in node, f"stages/{stage}.py READS {key}: not in params.yaml"
                node = node[part]


@pytest.mark.parametrize("stage", ["finetune", "generate", "score", "pair", "dpo", "frontier", "evaluate"])
def test_a_stage_depends_on_every_module_of_stages_it_imports(stage):
    """A change to stages/common.py (setup, the params view) must rerun the stages that use it."""
    import ast

    tree = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
    imported = {f"stages/{node.module.split('.')[1]}.py" for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages.")}
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    deps = set(declared.get("do", declared)["deps"])
    assert {f"stages/{stage}.py", *imported} <= deps and "stages/common.py" in imported


def test_the_repository_holds_one_pipeline():
    """DVC collects every dvc.yaml under the repository: a second one (e.g. a template that
    `dbdpo init` ships) would double every stage."""
    code = "import json; from dvc.repo import Repo; print(json.dumps(sorted({s.dvcfile.relpath for s in Repo('.').index.stages})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(out) == ["dvc.yaml"]


def test_the_titled_panels_draw_every_round_and_every_training_log():
    """dvc.yaml's top-level panels name each round's DVCLive files: a round in params.yaml
    without its lines would train with no curve, and a DVCLive folder declared as a plot would
    add a panel per file, titled by its path."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    rounds = yaml.safe_load((REPO / "params.yaml").read_text())["rounds"]
    drawn = {path for panel in dvc["plots"] if isinstance(panel, dict)
             for props in panel.values() for path in props.get("y", {})}
    for name in rounds:
        for quantity in ("policy_error", "reference_error", "loss", "implicit_accuracy"):
            assert f"logs/dpo/{name}/plots/metrics/{quantity}.tsv" in drawn, (name, quantity)
    assert {"logs/finetune/plots/metrics/loss.tsv", "logs/finetune/plots/metrics/probe_ratio.tsv"} <= drawn
    titles = [next(iter(panel)) for panel in dvc["plots"] if isinstance(panel, dict)]
    assert len(titles) <= 8 and all(" " in title for title in titles)  # a handful, titled in words
    stage_plots = [stage for stage, body in dvc["stages"].items() if "plots" in body.get("do", body)]
    assert stage_plots == []


def test_the_committed_lock_records_the_code_as_it_is():
    """Every file the repository ships that a stage depends on (its code, the prompt files) has
    in dvc.lock the md5 it has now: a stage's code edited without `dvc repro` (or `dvc commit`)
    leaves a lock that no longer says which code wrote the committed results, and every stage
    reads as changed. (A round's parquet files are outputs of earlier stages, not shipped.)"""
    import hashlib

    shipped = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    # every stage's entry, not one per path: a lock can be current in one stage and stale in another
    entries = [(name, dep["path"], dep["md5"]) for name, stage in lock.items() for dep in stage.get("deps", [])
               if dep["path"] in shipped]
    paths = {path for _, path, _ in entries}
    assert "dbdpo/tokenizer.py" in paths and "data/prompts/train.txt" in paths
    current = {path: hashlib.md5((REPO / path).read_bytes()).hexdigest() for path in paths}
    stale = sorted({f"{path} ({name})" for name, path, md5 in entries if current[path] != md5})
    assert stale == [], f"dvc.lock is stale for {stale}: run `dvc repro` and commit dvc.lock"
