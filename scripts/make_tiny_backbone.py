"""Save a tiny SD2-like (v-prediction) or SDXL-like pipeline as a diffusers folder.

    python scripts/make_tiny_backbone.py sdxl /tmp/tiny-sdxl
    dvc exp run -S model.backbone=sdxl -S model.path=/tmp/tiny-sdxl

runs the whole pipeline through the SDXL code path (two text encoders, pooled embedding,
size/crop ids) on a CPU in minutes: a rehearsal of a GPU run, with random UNet weights.
"""

from pathlib import Path

import typer

from dbdpo.tiny import TINY_ARCHS, save_tiny_pipeline


def main(arch: str = typer.Argument(..., help=f"one of {', '.join(TINY_ARCHS)}"),
         out: Path = typer.Argument(..., help="directory to write (model_index.json, unet/, ...)"),
         seed: int = typer.Option(0, help="init seed of the random weights")) -> None:
    if arch not in TINY_ARCHS:
        raise typer.BadParameter(f"{arch!r}: expected one of {', '.join(TINY_ARCHS)}", param_hint="ARCH")
    save_tiny_pipeline(arch, out, seed)
    kind = "sdxl" if arch == "sdxl" else "sd"
    typer.echo(f"wrote {out}; use it with -S model.backbone={kind} -S model.path={out.resolve()}")


if __name__ == "__main__":
    typer.run(main)
