"""`dbdpo init`: a ready DVC project for your own concept, without this repository.

    dbdpo init my-dog --concept ~/photos/dog --class-noun dog --kind live --preset sdxl
    cd my-dog && dvc repro

writes my-dog/ with params.yaml (the defaults with the preset applied, pointed at the concept), dvc.yaml (this pipeline,
each stage run as `dbdpo <stage>`), the training prompts and held-out evaluation prompts, the
concept's images copied to data/concept/, a requirements.txt pinning this dbdpo, then `git init`,
`dvc init` and a first commit. The project files ship in the package (stages/init_files/: copies of
this repository's own files, which tests/test_init.py keeps equal).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import typer

from stages.common import fail

app = typer.Typer(add_completion=False)

PRESETS = {"default": "params.yaml", "sd2": "sd2.yaml", "sd21": "sd21.yaml", "sdxl": "sdxl.yaml"}
KINDS = ("object", "live")


def project_file(name: str) -> str:
    return resources.files("stages").joinpath("init_files", name).read_text(encoding="utf-8")


def set_key(text: str, group: str, key: str, value: str) -> str:
    """params.yaml text with `group.key` set to `value` (a YAML scalar), its comment kept."""
    block = re.search(rf"^{group}:\n(?:(?:  .*|#.*)?\n)*", text, re.M)
    if block is None:
        raise KeyError(group)
    body, count = re.subn(rf"^(  {key}:\s*)(\S+|\"[^\"]*\")", lambda m: m.group(1) + value, block.group(0),
                          count=1, flags=re.M)
    if count != 1:
        raise KeyError(f"{group}.{key}")
    return text[:block.start()] + body + text[block.end():]


def project_dvc_yaml() -> str:
    """This repository's dvc.yaml for a project without its code: each stage runs as
    `dbdpo <stage>`, and the code is the installed package, not a dependency path."""
    text = project_file("pipeline.yaml")  # not named dvc.yaml: DVC would take it for a second pipeline
    text = text[text.index("stages:\n"):]  # the repository's header speaks of its own layout
    text = strip_code(text)
    return ("# Made by `dbdpo init`: the dbdpo pipeline, each stage the installed `dbdpo <stage>` command;\n"
            "# params lists exactly the keys each stage reads (`dbdpo <stage> --help` shows them).\n" + text)


def strip_code(text: str) -> str:
    """dvc.yaml text of this repository with each stage run as the installed `dbdpo <stage>`
    and no dependency on the repository's code."""
    text = re.sub(r"cmd: python -m stages\.(\w+)", r"cmd: dbdpo \1", text)
    text = re.sub(r"^\s*# the code it runs:.*\n", "", text, flags=re.M)
    return re.sub(r"^\s*- (dbdpo(/[\w.]+)*|stages/\w+\.py)\s*(#.*)?\n", "", text, flags=re.M)


def run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"`{' '.join(args)}` failed in {cwd}: {(result.stderr or result.stdout).strip()}")


@app.command()
def init(project: Path = typer.Argument(..., help="the folder to create (must not exist or be empty)"),
         concept: Path = typer.Option(..., help="a folder of images of your concept (copied into the project)"),
         class_noun: str = typer.Option(..., help="the concept's class, e.g. dog (prompts say 'a sks dog')"),
         kind: str = typer.Option("object", help="object | live: picks the DreamBooth evaluation prompts"),
         preset: str = typer.Option("default", help="default (the CPU proving ground) | sd2 | sd21 | sdxl")) -> None:
    """Write a DVC project for your concept, ready for `dvc repro`."""
    from importlib.metadata import version

    from dbdpo.config import ConceptConfig
    from dbdpo.data import load_concept
    from dbdpo.errors import UserError
    from dbdpo.params import load_config
    from dbdpo.presets import apply_preset

    if kind not in KINDS:
        fail(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if preset not in PRESETS:
        fail(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if not re.fullmatch(r"[a-z][a-z ]*", class_noun):
        fail(f"--class-noun {class_noun!r}: expected lowercase words, e.g. dog or teddy bear")
    if project.exists() and (not project.is_dir() or any(project.iterdir())):
        fail(f"{project} exists and is not an empty folder; pick a new name")
    try:  # every image must load before anything is written
        load_concept(ConceptConfig(dir=str(concept)))
    except UserError as e:
        fail(f"--concept: {e}")

    project.mkdir(parents=True, exist_ok=True)
    shutil.copytree(concept, project / "data" / "concept", ignore=shutil.ignore_patterns(".*"))
    prompts = project / "data" / "prompts"
    prompts.mkdir()
    if preset == "default":  # the proving ground's backbone knows only its own world's contexts
        (prompts / "train.txt").write_text(project_file("train.txt"))
        (prompts / "eval.txt").write_text(project_file("eval.txt"))
    else:
        # the 4,000-prompt pool for the kind (dbdpo.prompts) and the DreamBooth paper's 25 prompts
        (prompts / "train.txt").write_text(project_file(f"pool_{kind}.txt"))
        (prompts / "eval.txt").write_text(project_file(f"dreambooth_{kind}.txt"))
    params = project_file("params.yaml")
    if preset != "default":  # a preset is an overlay: the keys a GPU run changes (dbdpo.presets)
        params = apply_preset(params, project_file(PRESETS[preset]), f"--preset {preset}")
    for group, key, value in [("concept", "dir", "data/concept"), ("concept", "class_noun", class_noun),
                              ("generate", "prompts", "data/prompts/train.txt"),
                              ("evaluate", "prompts", "data/prompts/eval.txt")]:
        params = set_key(params, group, key, value)
    (project / "params.yaml").write_text(params)
    (project / "dvc.yaml").write_text(project_dvc_yaml())
    (project / ".gitignore").write_text("checkpoints/\n")  # training stages' resume state, not results
    # the dbdpo the project was made with (`dbdpo check` warns when another is installed)
    (project / "requirements.txt").write_text(f"dbdpo=={version('dbdpo')}\n")
    load_config(project / "params.yaml")  # the project's params validate as written

    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    (project / ".dvc" / "plots").mkdir(exist_ok=True)
    (project / ".dvc" / "plots" / "tradeoff.json").write_text(project_file("tradeoff.json"))
    # DVC's plots page with Vega inlined (scripts/offline_plots_template.py): it opens offline
    (project / ".dvc" / "plots" / "offline.html").write_text(project_file("offline.html"))
    run(["dvc", "config", "plots.html_template", "plots/offline.html"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", f"dbdpo init: {class_noun} ({preset})"], project)
    typer.echo(f"wrote {project} ({preset} params, {len(list((project / 'data/concept').iterdir()))} concept "
               f"images); next: cd {project} && dvc repro")


if __name__ == "__main__":
    app()
