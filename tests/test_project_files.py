"""The files `dbdpo init` writes ship in the package as real files (stages/init_files/), never as
links into a checkout: an editable install must make the project a wheel makes, whatever the
checkout's workspace holds (an applied `dvc exp` rewrites params.yaml). They stay equal to the
repository's own files."""

import pytest

from tests.conftest import REPO

SOURCES = {  # stages/init_files/<name>: the repository file it is a copy of
    "params.yaml": "params.yaml", "pipeline.yaml": "dvc.yaml", "sd2.yaml": "presets/sd2.yaml",
    "sd21.yaml": "presets/sd21.yaml", "sdxl.yaml": "presets/sdxl.yaml", "train.txt": "data/prompts/train.txt",
    "eval.txt": "data/prompts/eval.txt", "pool_object.txt": "data/prompts/pool_object.txt",
    "pool_live.txt": "data/prompts/pool_live.txt", "dreambooth_object.txt": "data/prompts/dreambooth_object.txt",
    "dreambooth_live.txt": "data/prompts/dreambooth_live.txt", "offline.html": ".dvc/plots/offline.html",
    "tradeoff.json": ".dvc/plots/tradeoff.json",
}
# shipped files that copy no repository file: the summary stage of a several-concept dvc.yaml
# (stages/concepts.py; tests/test_dvc_wiring.py checks its code deps)
OWN = ("summary.yaml",)


def test_every_shipped_file_is_listed_and_a_real_file():
    shipped = REPO / "stages" / "init_files"
    assert sorted(p.name for p in shipped.iterdir()) == sorted([*SOURCES, *OWN])
    assert not [p for p in shipped.iterdir() if p.is_symlink()]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_shipped_file_equals_the_repositorys(name):
    shipped, source = REPO / "stages" / "init_files" / name, REPO / SOURCES[name]
    assert shipped.read_bytes() == source.read_bytes(), f"stages/init_files/{name} differs: cp {SOURCES[name]} {shipped}"


def test_an_init_projects_pipeline_has_no_code_paths():
    """A project made by `dbdpo init` runs the installed package: its dvc.yaml keeps every stage,
    data dependency and param of this repository's, and lists none of the code (at any depth:
    dbdpo/world/backbone.py as well as dbdpo/config.py), which is not in the project."""
    import yaml

    from stages.init import project_dvc_yaml

    ours, project = (yaml.safe_load(text)["stages"] for text in ((REPO / "dvc.yaml").read_text(), project_dvc_yaml()))
    assert list(project) == list(ours)
    for name, stage in ours.items():
        body, made = stage.get("do", stage), project[name].get("do", project[name])
        code = [d for d in body["deps"] if d.startswith(("dbdpo", "stages/"))]
        assert code and made["deps"] == [d for d in body["deps"] if d not in code], name
        assert made["params"] == body["params"] and made["cmd"] == body["cmd"].replace("python -m stages.", "dbdpo ")
