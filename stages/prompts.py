"""`dbdpo prompts`: a training prompt pool at the papers' scale (dbdpo.prompts), in any folder.

    dbdpo prompts --class-noun dog --n 4000 --out data/prompts/train_dog.txt

The contexts of the DreamBooth paper's evaluation prompts stay out of the pool; by default
those are the package's own copies (the ones `dbdpo init` writes), so it runs outside this
repository too.
"""

from importlib import resources
from pathlib import Path

import typer

from dbdpo.prompts import ACTIONS
from stages.common import disk_errors, fail, user_errors

app = typer.Typer(add_completion=False)

KINDS = tuple(ACTIONS)  # object, live


def shipped_eval_sets() -> list[Path]:
    """The DreamBooth paper's evaluation prompt files as the package ships them."""
    project = resources.files("stages").joinpath("init_files")
    return [Path(str(project.joinpath(f"dreambooth_{kind}.txt"))) for kind in KINDS]


@app.command()
@disk_errors
def main(out: Path = typer.Option(..., help="the prompt file to write"),
         class_noun: str = typer.Option(None, help="the concept's class, e.g. dog (live) or backpack (object)"),
         kind: str = typer.Option(None, help="object | live (default: from --class-noun)"),
         n: int = typer.Option(4000, help="prompts to write"),
         eval_file: list[Path] = typer.Option(None, "--eval", help="an evaluation prompt file whose contexts stay "
                                                                    "out of the pool (repeatable; default: the "
                                                                    "DreamBooth paper's two sets)"),
         seed: int = typer.Option(0, help="the pool's order")) -> None:
    """Write `n` training prompt templates for your concept's kind, none on an evaluation context."""
    from dbdpo.prompts import subject_kind, write_pool

    if not (kind or class_noun):
        fail("give --class-noun (e.g. dog) or --kind (object | live)")
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    with user_errors():
        written = write_pool(out, kind or subject_kind(class_noun), n, eval_file or shipped_eval_sets(), seed,
                             class_noun)
    typer.echo(f"wrote {written}")


if __name__ == "__main__":
    app()
