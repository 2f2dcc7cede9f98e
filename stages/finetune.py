"""Stage finetune: DreamBooth on the concept images -> models/round_0."""

from pathlib import Path

import typer

from stages.common import (
    CONCEPT_OPTION,
    PARAMS_OPTION,
    disk_errors,
    live_log,
    producing,
    releases_cores,
    setup,
    training_checkpoint,
    user_errors,
)
from stages.inputs import require_inputs

# The params keys this stage reads, exactly as dvc.yaml lists them (a test checks both).
# generate's sampling settings draw the prior-preservation class images; frontier.finetune_fractions
# names the early stops it keeps (the frontier's DreamBooth stopped early).
READS = ("model.backbone", "model.path", "model.revision", "model.variant", "model.vae", "model.resolution",
         "concept", "finetune", "generate.steps", "generate.scheduler",
         "generate.guidance_scale", "generate.batch_size", "frontier.finetune_fractions")

app = typer.Typer(add_completion=False)


@app.command()
@disk_errors
@releases_cores
def main(concept_name: str | None = CONCEPT_OPTION, params: Path = PARAMS_OPTION) -> None:
    """DreamBooth on concept.dir with the instance prompt (V* = concept.token): a LoRA, or the
    whole model with finetune.method=full.

    Writes models/round_0/ (a diffusers LoRA, or for full a diffusers pipeline folder, both
    safetensors), models/early_stops/ (the LoRA after each frontier.finetune_fractions of the
    steps; none for full) and logs/finetune/ (DVCLive, each step as it happens).
    """
    # the model stack loads here, not at import: `dbdpo <stage> --help` answers at once
    from dbdpo.backbones import load_backbone
    from dbdpo.checkpoints import remove_checkpoint
    from dbdpo.config import early_stop_steps
    from dbdpo.data import load_captions, load_concept
    from dbdpo.dreambooth import (
        dreambooth,
        instance_prompt,
        instance_prompts,
        save_round_0,
        weights_precision,
    )
    from dbdpo.early_stops import EarlyStops, save_early_stops
    from dbdpo.provenance import made_from

    cfg, layout = setup(params, "finetune", READS, concept_name, processes=True, before=require_inputs)
    ft = cfg.finetune
    with user_errors():
        concept = load_concept(cfg.concept)
        # each photo's prompt: a bad or missing caption stops here, before round_0 is removed
        prompts = instance_prompts(ft, cfg.concept, load_captions(cfg.concept) if ft.captions else [None] * len(concept))
        backbone = load_backbone(cfg.model, precision=weights_precision(ft))
    inputs = made_from(Path(cfg.concept.dir))
    ckpt = training_checkpoint(cfg, READS, layout.checkpoint_dir("round_0"), ft.checkpoint_every, inputs)
    early_stops = EarlyStops(early_stop_steps(cfg.frontier.finetune_fractions, ft.steps))
    with producing(layout.model_dir("round_0"), layout.early_stops, layout.logs / "finetune") as writes:
        # a diverged run stops here, before the model is written
        previews = [instance_prompt(ft, cfg.concept)]
        with live_log(layout.logs / "finetune", cfg, layout.stage("finetune"), previews) as log:
            lora, _ = dreambooth(backbone, concept, ft, cfg.concept, cfg.generate, log.on_step, ckpt, log.preview,
                                 prompts, early_stops)
        if writes:  # every process holds the same weights (DDP); one writes them
            save_early_stops(backbone.pipe, early_stops, ft.steps, layout.early_stops, made_from=inputs)
            save_round_0(backbone, lora, layout.model_dir("round_0"), made_from=inputs)
            remove_checkpoint(ckpt)


if __name__ == "__main__":
    app()
