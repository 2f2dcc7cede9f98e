"""Stage finetune: DreamBooth LoRA on the concept images -> models/round_0."""

from pathlib import Path

import typer

from dbdpo.artifacts import remove_outputs, write_csv
from dbdpo.backbones import load_backbone
from dbdpo.data import load_concept
from dbdpo.lora import save_lora
from dbdpo.provenance import made_from
from dbdpo.sampling import generate, plan_samples
from dbdpo.training import train_dreambooth
from stages.common import LOGS, PARAMS_OPTION, model_dir, setup, user_errors

app = typer.Typer(add_completion=False)


@app.command()
def main(params: Path = PARAMS_OPTION) -> None:
    """DreamBooth-finetune a LoRA on concept.dir with the instance prompt (V* = concept.token).

    Writes models/round_0/ (diffusers LoRA, safetensors) and logs/finetune.csv.
    """
    cfg = setup(params)
    with user_errors():
        concept = load_concept(cfg.concept)
        backbone = load_backbone(cfg.model, precision=cfg.finetune.mixed_precision)
    remove_outputs(model_dir("round_0"), LOGS / "finetune.csv")
    ft = cfg.finetune
    names = dict(token=cfg.concept.token, class_noun=cfg.concept.class_noun)
    class_images, class_prompt = None, None
    if ft.prior_preservation:
        # Prior preservation: the base model's own images of the class keep it from forgetting.
        class_prompt = ft.class_prompt.format(**names)
        plan = plan_samples([ft.class_prompt], [class_prompt], ft.num_class_images, ft.seed)
        class_images = generate(backbone.pipe, plan, steps=cfg.generate.steps,
                                guidance_scale=cfg.generate.guidance_scale,
                                batch_size=cfg.generate.batch_size, resolution=backbone.resolution,
                                desc="class images")
    with user_errors():  # a diverged run stops here, before anything is written
        state, log_rows = train_dreambooth(backbone, [c.image for c in concept],
                                           ft.instance_prompt.format(**names), ft, class_images, class_prompt)
    save_lora(backbone.pipe, state, model_dir("round_0"), made_from=made_from(Path(cfg.concept.dir)))
    write_csv(log_rows, LOGS / "finetune.csv")


if __name__ == "__main__":
    app()
