"""`dbdpo show`: the evaluation's headline, one line per round (eval/rounds.json, which evaluate
writes): held-out IS and TS with their standard errors, and each round's gains in IS, TS and
S_0.5 over round_0 in round_0's stds, with theirs."""

import json

import typer

from stages.common import ROUNDS_TABLE, fail

app = typer.Typer(add_completion=False)


@app.command()
def main() -> None:
    """Print each round's held-out IS, TS and gains over round_0 (run in the project folder)."""
    from dbdpo.evaluation import round_summary

    table = ROUNDS_TABLE
    if not table.is_file():
        fail(f"{table} is missing: `dvc repro` runs the evaluate stage that writes it")
    rows = json.loads(table.read_text())
    for name, row in rows.items():
        typer.echo(round_summary(name, row))


if __name__ == "__main__":
    app()
