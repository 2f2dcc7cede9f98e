"""Stage dpo@round: a DPO LoRA on the round's preferences, reference = the round's start model
(Diffusion-DPO on pairs, or RankDPO on ranked lists: dpo.loss). Every dpo.checkpoint_every
steps the loop's state goes to checkpoints/dpo/<round>/; a rerun after a kill resumes there."""

from pathlib import Path

import typer

from stages.common import (
    CONCEPT_OPTION,
    PARAMS_OPTION,
    PREVIEW_PROMPTS,
    ROUND_OPTION,
    disk_errors,
    live_log,
    producing,
    releases_cores,
    setup_round,
    stage_round,
    training_checkpoint,
    user_errors,
)

# The params keys this stage reads, exactly as dvc.yaml lists them (a test checks both).
# Not model.precision: training runs in dpo.mixed_precision.
READS = ("model.backbone", "model.path", "model.revision", "model.variant", "model.vae", "model.resolution",
         "dpo", "rounds.${key}")

app = typer.Typer(add_completion=False)


@app.command()
@disk_errors
@releases_cores
def main(round_name: str | None = ROUND_OPTION, concept_name: str | None = CONCEPT_OPTION,
         params: Path = PARAMS_OPTION) -> None:
    """Writes models/<round>/ (start LoRA stacked with the DPO LoRA: one file, relative to the
    base backbone), logs/dpo/<round>/ (DVCLive, each step as it happens) and
    rounds/<round>/train/metrics.json."""
    # the model stack loads here, not at import: `dbdpo <stage> --help` answers at once
    from dbdpo.artifacts import write_json
    from dbdpo.backbones import round_lora
    from dbdpo.checkpoints import remove_checkpoint
    from dbdpo.dpo import final_metrics, timestep_range
    from dbdpo.lora import save_lora
    from dbdpo.preferences import read_preferences
    from dbdpo.provenance import made_from
    from dbdpo.rounds import dpo_round, load_round_model

    round_name = stage_round(round_name, "dpo")
    cfg, plans, layout = setup_round(params, "dpo", READS, concept_name, round_name, processes=True)
    out = layout.round_dir(round_name)
    with user_errors():
        prefs = read_preferences(layout.checked_folder(out / "preferences", "preferences", round_name), cfg.dpo.loss)
        start_dir = layout.checked_model(plans[round_name].start)
        start = round_lora(start_dir)  # read once: merged below, and stacked under the DPO LoRA
        # the start LoRA merged: the reference is exactly the round's start model
        backbone = load_round_model(cfg.model, layout.checked_model("round_0"), start, cfg.dpo.mixed_precision)
        # a range past the scheduler's fails here, before the round's model is removed
        timestep_range(cfg.dpo, backbone.training_scheduler().config.num_train_timesteps)
    inputs = made_from(start_dir, out / "preferences")
    ckpt = training_checkpoint(cfg, READS, layout.checkpoint_dir(round_name), cfg.dpo.checkpoint_every, inputs)
    # previews: the round's first two prompts, as its pairs hold them
    prompts = list(dict.fromkeys(prefs.table["prompt"]))[:PREVIEW_PROMPTS]
    logs = layout.logs / "dpo" / round_name
    with producing(layout.model_dir(round_name), logs, out / "train" / "metrics.json") as writes:
        # a diverged run stops here, before the model is written
        with live_log(logs, cfg, layout.stage("dpo", round_name), prompts) as log:
            lora, log_rows = dpo_round(backbone, start, prefs, cfg.dpo, log.on_step, ckpt, log.preview)
        if writes:  # every process holds the same weights (DDP); one writes them
            save_lora(backbone.pipe, lora, layout.model_dir(round_name), made_from=inputs)
            write_json(final_metrics(log_rows), out / "train" / "metrics.json")
            remove_checkpoint(ckpt)


if __name__ == "__main__":
    app()
