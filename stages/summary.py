"""`dbdpo summary`: several concepts as one result: each one's headline (its metrics.json) and
the mean over the concepts with the standard error across them, as the papers report a method
over their subjects. Of several projects, one concept each:

    dbdpo summary runs/dog runs/cat runs/teapot --out summary.json

With no project, of params.yaml's `concepts` (concepts/<name>/, one pipeline): the summary stage
of a several-concept dvc.yaml (stages/concepts.py), which writes metrics.json.
"""

import os
from pathlib import Path

import typer

from stages.common import PARAMS_OPTION, disk_errors, fail, user_errors
from stages.concepts import out_of_step
from stages.layout import Layout

app = typer.Typer(add_completion=False)

# the headline figures, in metrics.json's order; a project's others follow
COLUMNS = ("IS", "TS", "IS_gain", "TS_gain", "S_0.5_gain", "beyond_frontier")


@app.command()
@disk_errors
def main(projects: list[Path] = typer.Argument(None, show_default=False,
                                               help="project folders, each with the metrics.json its `dvc repro` "
                                                    "wrote; none: params.yaml's concepts, into metrics.json"),
         out: Path | None = typer.Option(None, help="also write the figures as JSON here"),
         params: Path = PARAMS_OPTION) -> None:
    """Print each concept's last-round IS, TS and gains over round 0 (round 0 stds), then their
    mean over the concepts ± the standard error across them."""
    from dbdpo.across_concepts import format_mean_se, metrics_over_concepts, summarize
    from dbdpo.artifacts import write_json
    from dbdpo.params import load_config

    pipeline = not projects  # the several-concept pipeline's summary stage
    if pipeline:
        with user_errors():
            names = list(load_config(params).concepts)
        if not names:
            fail(f"{params} lists no concepts: name the project folders to summarize")
        # under dvc repro, a concept added by `dvc exp run -S` has no stages until dvc.yaml is rewritten
        if os.environ.get("DVC_STAGE") == "summary" and (problem := out_of_step(params, names)):
            fail(problem)
        projects, out = [Layout(name).root for name in names], out or Layout().metrics
    with user_errors():
        result = summarize(projects)
    mean = result["mean"]
    columns = [c for c in COLUMNS if c in mean] + [c for c in mean if c not in COLUMNS]
    signed = {c: c.endswith("_gain") or c == "beyond_frontier" for c in columns}  # IS and TS are scores
    labels = {name: Path(name).name if pipeline else name for name in result["concepts"]}
    width = max(len("mean ± se"), *map(len, labels.values()))
    typer.echo(f"{'concept' if pipeline else 'project':<{width}} | " + " | ".join(f"{c:>15}" for c in columns))
    for name, row in result["concepts"].items():
        typer.echo(f"{labels[name]:<{width}} | "
                   + " | ".join(f"{row[c]:>{'+' if signed[c] else ''}15.3f}" for c in columns))
    typer.echo(f"{'mean ± se':<{width}} | " + " | ".join(f"{format_mean_se(mean[c], signed[c]):>15}" for c in columns))
    typer.echo(f"({result['count']} concepts; gains in each project's round 0 stds; se: across the concepts)")
    if out is not None:
        with user_errors():
            write_json(metrics_over_concepts(result), out)


if __name__ == "__main__":
    app()
