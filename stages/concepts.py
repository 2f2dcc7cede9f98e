"""`dbdpo concepts`: dvc.yaml for the concepts params.yaml lists, so that one `dvc repro` runs
them all.

    dbdpo concepts           # after editing params.yaml `concepts`; then dvc repro
    dbdpo concepts --check   # fails (exit 2) when dvc.yaml is not what the concepts ask for
    dbdpo concepts --dreambooth-dataset ~/dreambooth/dataset   # its 30 subjects as the concepts

Each concept gets the one-concept pipeline's stages under its own name (finetune-dog,
generate-dog@round_1, ..., evaluate-dog) writing under concepts/<name>/, and the `summary` stage
writes metrics.json: the mean over the concepts ± the standard error across them, then each
concept's headline. Why stage groups written per concept list, not DVC's matrix: docs/design.md,
"Several concepts". With no concepts it writes the one-concept pipeline back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import typer
import yaml

from dbdpo.config import ConceptConfig, ConceptEntry
from dbdpo.errors import UserError
from stages.common import PARAMS_OPTION, disk_errors, fail, user_errors
from stages.layout import CONCEPTS, Layout

app = typer.Typer(add_completion=False)

DVC_YAML = Path("dvc.yaml")
# the run's own artifacts: under concepts/<name>/ for each concept (stages.layout.Layout)
ARTIFACTS = ("models", "rounds", "eval", "logs", "metrics.json")
# the concept group's keys each concept sets, and those all concepts share (min_size)
CONCEPT_KEYS = tuple(f.name for f in dataclasses.fields(ConceptEntry))
SHARED_KEYS = tuple(f.name for f in dataclasses.fields(ConceptConfig) if f.name not in CONCEPT_KEYS)


def _path(path: str, layout: Layout) -> str:
    """A dvc.yaml path of the one-concept pipeline, as concept `layout.concept` has it."""
    if path == "${concept.dir}":
        return f"${{concepts.{layout.concept}.dir}}"
    if path.split("/")[0] in ARTIFACTS:
        return str(layout.root / path)
    return path  # code, the prompt files the params name


def _entries(entries: list, layout: Layout) -> list:
    """deps / outs / metrics entries (a path, or {path: options}) with their paths moved."""
    return [_path(e, layout) if isinstance(e, str) else {_path(k, layout): v for k, v in e.items()} for e in entries]


def _params(keys: list[str], name: str) -> list[str]:
    """A stage's params keys with several concepts: the concept group's per-concept keys read
    from concepts.<name> (for_concept), the rest as they are."""
    out = []
    for key in keys:
        if key == "concept":
            out += [*(f"concept.{shared}" for shared in SHARED_KEYS), f"concepts.{name}"]
        elif key.startswith("concept."):
            field = key.removeprefix("concept.")
            out.append(f"concepts.{name}.{field}" if field in CONCEPT_KEYS else key)
        else:
            out.append(key)
    return out


def concept_stage(spec: dict, name: str) -> dict:
    """One stage (or foreach group) of the one-concept pipeline, as concept `name` runs it."""
    spec = copy.deepcopy(spec)
    body = spec.get("do", spec)
    layout = Layout(name)
    for kind in ("deps", "outs", "metrics"):
        if kind in body:
            body[kind] = _entries(body[kind], layout)
    if "params" in body:
        body["params"] = _params(body["params"], name)
    return spec


def concept_plots(plots: list, name: str) -> list:
    """The one-concept pipeline's plots, drawn from concept `name`'s files, titled with its name."""
    layout, out = Layout(name), []
    for plot in plots:
        if isinstance(plot, str):
            out.append(_path(plot, layout))
            continue
        (title, spec), = plot.items()
        spec = copy.deepcopy(spec)
        spec["y"] = {_path(path, layout): column for path, column in spec["y"].items()}
        out.append({f"{name}: {title}": spec})
    return out


def pipeline(template: dict, summary: dict, names: list[str]) -> dict:
    """dvc.yaml for concepts `names`: each concept's copy of the template's stages and plots,
    and the summary stage (`summary`: its spec without the concepts' files) reading every
    concept's metrics.json and eval/rounds.json. No names: the template itself."""
    if not names:
        return template
    stages = {f"{stage}-{name}": concept_stage(spec, name)
              for name in names for stage, spec in template["stages"].items()}
    summary = copy.deepcopy(summary)
    summary["deps"] = ([str(path) for name in names for path in (Layout(name).metrics, Layout(name).rounds_table)]
                       + (summary.get("deps") or []))
    stages["summary"] = summary
    plots = [plot for name in names for plot in concept_plots(template.get("plots", []), name)]
    return {"stages": stages, "plots": plots}


def templates(in_repository: bool) -> tuple[dict, dict]:
    """The one-concept pipeline and the summary stage: this repository's (`python -m stages.<x>`,
    with its code as dependencies), or a project's (`dbdpo <x>`, the installed package)."""
    from stages.init import project_dvc_yaml, project_file, strip_code

    if in_repository:
        return yaml.safe_load(project_file("pipeline.yaml")), yaml.safe_load(project_file("summary.yaml"))["summary"]
    return yaml.safe_load(project_dvc_yaml()), yaml.safe_load(strip_code(project_file("summary.yaml")))["summary"]


HEADER = ("# Written by `dbdpo concepts` from params.yaml's concepts ({names}): one stage group per concept,\n"
          "# each writing under concepts/<name>/, and `summary` (metrics.json: the mean over the concepts).\n"
          "# Edit the concepts in params.yaml, then rerun `dbdpo concepts`; a stage checks that they agree.\n")


def render(template: dict, summary: dict, names: list[str], one_concept_text: str) -> str:
    """dvc.yaml's text for `names`; with none, the one-concept pipeline's own text (its comments kept)."""
    if not names:
        return one_concept_text
    text = yaml.safe_dump(pipeline(template, summary, names), sort_keys=False, width=120, allow_unicode=True)
    return HEADER.format(names=", ".join(names)) + text


def with_concepts(text: str, concepts: dict[str, dict[str, str]]) -> str:
    """params.yaml text with its `concepts` group replaced by `concepts` (one flow mapping a
    line; every other line, comments included, kept)."""
    block = re.search(r"^concepts:.*\n(?:  .*\n)*", text, re.MULTILINE)
    if block is None:
        raise UserError("params.yaml has no top-level `concepts:` line; add `concepts: {}` (the repository's "
                        "params.yaml shows it) and rerun")
    # JSON strings are YAML flow scalars: a folder or class with spaces or colons stays one value
    rows = [f"  {name}: {{{', '.join(f'{key}: {json.dumps(value)}' for key, value in entry.items())}}}\n"
            for name, entry in concepts.items()]
    return text[:block.start()] + "concepts:\n" + "".join(rows) + text[block.end():]


def dataset_concepts(folder: Path, token: str) -> dict[str, dict[str, str]]:
    """The `concepts` entries of a folder laid out like the DreamBooth dataset, one per subject."""
    from dbdpo.dreambooth_dataset import read_subjects

    return {name: {"dir": str(folder / name), "token": token, "class_noun": noun}
            for name, noun in read_subjects(folder).items()}


def expected_pipeline(names: list[str]) -> str:
    """dvc.yaml's text for concepts `names`, in this repository's checkout (its code as
    dependencies) or in a project `dbdpo init` wrote (the installed package)."""
    from stages.init import project_dvc_yaml, project_file

    in_repository = Path("stages/init_files/pipeline.yaml").is_file()
    template, summary = templates(in_repository)
    return render(template, summary, names, project_file("pipeline.yaml") if in_repository else project_dvc_yaml())


def out_of_step(params: Path, names: list[str]) -> str | None:
    """Why dvc.yaml is not the pipeline of concepts `names` (params.yaml's), or None when it is."""
    if DVC_YAML.is_file() and DVC_YAML.read_text() == expected_pipeline(names):
        return None
    return (f"{DVC_YAML} is not the pipeline for {params}'s concepts ({', '.join(names) or 'none'}): "
            "run `dbdpo concepts` to rewrite it")


@app.command()
@disk_errors
def main(params: Path = PARAMS_OPTION,
         check: bool = typer.Option(False, "--check",
                                    help="only check: fail when dvc.yaml is not the concepts' pipeline"),
         dreambooth_dataset: Path | None = typer.Option(
             None, help="first set params.yaml's concepts to this folder's subjects (laid out like the DreamBooth "
                        "dataset: a folder per subject and prompts_and_classes.txt)"),
         token: str = typer.Option("sks", help="with --dreambooth-dataset: every subject's instance token")) -> None:
    """Write dvc.yaml for params.yaml's `concepts` (run in the project folder)."""
    from dbdpo.artifacts import atomic_file
    from dbdpo.params import config_from_dict, load_config, parse_params_text

    if check and dreambooth_dataset is not None:
        fail("--check writes nothing: run --dreambooth-dataset without it")
    if dreambooth_dataset is not None:
        with user_errors():
            load_config(params)  # the params as they are must be valid before they are rewritten
            text = with_concepts(params.read_text(), dataset_concepts(dreambooth_dataset, token))
            config_from_dict(parse_params_text(text, params))
        with atomic_file(params) as tmp:
            tmp.write_text(text)
    with user_errors():
        names = list(load_config(params).concepts)
    if check:
        if problem := out_of_step(params, names):
            fail(problem)
        typer.echo(f"{DVC_YAML}: the pipeline of {len(names) or 'the one'} concept{'s' * (len(names) != 1)}")
        return
    with atomic_file(DVC_YAML) as tmp:
        tmp.write_text(expected_pipeline(names))
    folders = sorted(p.name for p in CONCEPTS.iterdir() if p.is_dir()) if CONCEPTS.is_dir() else []
    stale = [name for name in folders if name not in names]
    typer.echo(f"wrote {DVC_YAML}: " + (f"{len(names)} concepts ({', '.join(names)}) and summary" if names
                                        else "the one concept of params.yaml `concept`")
               + (f"; {CONCEPTS}/{{{','.join(stale)}}} belong to no concept now" if stale else ""))


if __name__ == "__main__":
    app()
