"""Export a round's LoRA in kohya-ss format, for ComfyUI and A1111/Forge users.

    python scripts/export_kohya.py models/round_2 exports/my_dog_round_2.safetensors

models/<round>/ already holds the diffusers-format LoRA that `pipe.load_lora_weights` reads;
this writes the same weights under kohya names (lora_unet_*.lora_down/lora_up/alpha), fp16.
"""

from pathlib import Path

import typer

from dbdpo.backbones import is_pipeline_folder
from dbdpo.lora import load_lora, save_kohya


def main(model_dir: Path = typer.Argument(..., help="a round's model folder, e.g. models/round_2"),
         out: Path = typer.Argument(..., help="the .safetensors file to write")) -> None:
    if out.suffix != ".safetensors":
        raise typer.BadParameter(f"{out}: the output must end in .safetensors", param_hint="OUT")
    if is_pipeline_folder(model_dir):
        raise typer.BadParameter(f"{model_dir} is a whole pipeline (finetune.method=full), not a LoRA: use it as "
                                 "the base model and export a later round's LoRA", param_hint="MODEL_DIR")
    try:
        state = load_lora(model_dir)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="MODEL_DIR") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    save_kohya(state, out)
    typer.echo(f"wrote {out} ({len(state) // 2} LoRA modules, kohya format)")


if __name__ == "__main__":
    typer.run(main)
