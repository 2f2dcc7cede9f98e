"""`dbdpo show`: the evaluation's headline, one line per round (eval/rounds.json, which evaluate
writes): held-out IS and TS with their standard errors, and each round's gains in IS, TS and
S_0.5 over round_0 in round_0's stds, with theirs."""

import json
from pathlib import Path

import typer

from stages.common import CONCEPT_OPTION, PARAMS_OPTION, fail, user_errors
from stages.layout import Layout

app = typer.Typer(add_completion=False)


@app.command()
def main(concept_name: str | None = CONCEPT_OPTION, params: Path = PARAMS_OPTION) -> None:
    """Print each round's held-out IS, TS and gains over round_0 (run in the project folder);
    with params `concepts`, each concept's (or --concept's)."""
    from dbdpo.evaluation import round_summary
    from dbdpo.params import load_config

    with user_errors():  # no params file: a project's one concept, as evaluate left it
        concepts = list(load_config(params).concepts) if params.is_file() else []
    if concept_name is not None and concept_name not in concepts:
        fail(f"--concept {concept_name}: not in {params} concepts ({', '.join(concepts) or 'none'})")
    names = [concept_name] if concept_name else concepts or [None]
    for name in names:
        table = Layout(name).rounds_table
        if not table.is_file():
            fail(f"{table} is missing: `dvc repro` runs the evaluate stage that writes it")
        if name is not None:
            typer.echo(f"{name}:")
        for round_name, row in json.loads(table.read_text()).items():
            typer.echo(round_summary(round_name, row))


if __name__ == "__main__":
    app()
