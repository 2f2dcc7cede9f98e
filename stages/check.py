"""`dbdpo check`: every weight, prompt file and photo the params name, resolved before any work;
what is missing is printed with the command that fetches only its files. The finetune stage runs
the same check first (stages/inputs.py), so a GPU run never finds a missing scorer after
DreamBooth. With several concepts, it also checks that dvc.yaml runs the ones params.yaml lists."""

from pathlib import Path

import typer

from stages.common import PARAMS_OPTION, user_errors

app = typer.Typer(add_completion=False)


@app.command()
def main(params: Path = PARAMS_OPTION) -> None:
    """Resolve the backbone, VAE, CLIP, DINO, PickScore, HPS and aesthetic weights, the prompt
    files and the concept photos the params name; exit 1 naming what is missing and how to fetch it."""
    from dbdpo.params import load_config
    from dbdpo.preflight import check, report_text
    from stages.concepts import DVC_YAML, out_of_step

    with user_errors():
        cfg = load_config(params)
        report = check(cfg)
    typer.echo(report_text(report), err=not report.ok)
    # the stages dvc repro would run are those of the concepts the params list
    if DVC_YAML.is_file() and (problem := out_of_step(params, list(cfg.concepts))):
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(code=1)
    if not report.ok:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
