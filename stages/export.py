"""`dbdpo export`: a round's model in the formats other tools load.

    dbdpo export kohya models/round_2 exports/my_dog_round_2.safetensors

models/<round>/ already holds the diffusers-format LoRA that `pipe.load_lora_weights` reads;
`kohya` writes the same weights under kohya names (lora_unet_* / lora_te_*, lora_down /
lora_up / alpha), fp16, for ComfyUI and A1111/Forge.
"""

from pathlib import Path

import typer

from stages.common import PARAMS_OPTION, disk_errors, fail

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.callback()
def export() -> None:
    """Write a round's model for other tools."""


def inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def project_facts(params: Path) -> tuple[dict, bool | None]:
    """What the export takes from the project's params: for the metadata, the trigger phrase,
    the concept's image count and the training resolution; and whether the backbone is SDXL
    (kohya's SDXL names). ({}, None) without the file."""
    from dbdpo.data import load_concept
    from dbdpo.params import load_config
    from dbdpo.preflight import check_backbone, native_size

    if not params.is_file():
        return {}, None
    cfg = load_config(params)
    return ({"trigger": f"{cfg.concept.token} {cfg.concept.class_noun}", "images": len(load_concept(cfg.concept)),
             "resolution": native_size(cfg, check_backbone(cfg)[1])}, cfg.model.backbone == "sdxl")


@app.command()
@disk_errors
def kohya(model_dir: Path = typer.Argument(..., help="a round's model folder, e.g. models/round_2"),
          out: Path = typer.Argument(..., help="the .safetensors file to write"),
          force: bool = typer.Option(False, "--force", help="overwrite `out` if it exists"),
          params: Path = PARAMS_OPTION) -> None:
    """The round's LoRA in kohya-ss format (ComfyUI, A1111/Forge), fp16, with kohya's metadata:
    network dims, base model, and from the params (when the file is there) the trigger phrase
    `<concept.token> <concept.class_noun>` and the training resolution. An SDXL LoRA takes
    kohya's SDXL names (the original checkpoint's input_blocks / output_blocks)."""
    from dbdpo.errors import UserError
    from dbdpo.lora import kohya_metadata, load_lora, save_kohya
    from dbdpo.model_files import is_pipeline_folder

    if out.suffix != ".safetensors":
        fail(f"{out}: the output must end in .safetensors")
    if is_pipeline_folder(model_dir):
        fail(f"{model_dir} is a whole pipeline (finetune.method=full), not a LoRA: use it as the base model "
             "and export a later round's LoRA")
    try:
        state = load_lora(model_dir)
    except UserError as e:
        fail(str(e))
    # models/ holds DVC's outputs: an export there would replace a round's own weights
    models = model_dir.resolve().parent if model_dir.resolve().parent.name == "models" else model_dir
    if inside(out, model_dir) or inside(out, models) or inside(out, Path("models")):
        fail(f"{out}: inside {models}, where the rounds' models live; export elsewhere, e.g. exports/")
    if out.is_dir():
        fail(f"{out} is a folder; give the .safetensors file to write in it, e.g. {out / 'lora.safetensors'}")
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to overwrite it")
    try:
        facts, sdxl = project_facts(params)
        metadata = kohya_metadata(state, **facts)
    except UserError as e:
        fail(str(e))
    if sdxl is None:  # no params: SDXL by its UNet's cross-attention width, as the metadata reads it
        sdxl = metadata.get("ss_base_model_version", "").startswith("sdxl")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_kohya(state, out, metadata, sdxl=sdxl)
    typer.echo(f"wrote {out} ({len(state) // 2} LoRA modules, kohya format)")


if __name__ == "__main__":
    app()
