"""Stage generate@round: K seeded images for each of the round's N training prompts."""

from pathlib import Path

import typer

from dbdpo.artifacts import remove_outputs
from dbdpo.backbones import load_backbone
from dbdpo.data import render, train_prompts
from dbdpo.lora import load_lora
from dbdpo.provenance import made_from
from dbdpo.sampling import generate, plan_samples, round_seed, write_samples
from stages.common import (
    PARAMS_OPTION,
    ROUND_OPTION,
    checked_model,
    round_dir,
    setup,
    stage_round,
    user_errors,
)

app = typer.Typer(add_completion=False)


@app.command()
def main(round_name: str | None = ROUND_OPTION, params: Path = PARAMS_OPTION) -> None:
    """Sample the round's start model on its own slice of the generate.prompts pool
    (round 1 the first generate.num_prompts prompts, round 2 the next ones, ...).

    Writes rounds/<round>/images/*.png and rounds/<round>/samples.parquet.
    """
    round_name = stage_round(round_name, "generate")
    base = setup(params, round_name)
    cfg = base.for_round(round_name)
    index = cfg.round_names().index(round_name) + 1
    g = cfg.generate
    with user_errors():
        slices = {name: base.prompt_slice(name) for name in base.round_names()}
        templates = train_prompts(base.generate.prompts, slices)[round_name]
        start_dir = checked_model(cfg.rounds[round_name].start)
        start = load_lora(start_dir)
        backbone = load_backbone(cfg.model, lora=start, precision=cfg.model.precision)
    out = round_dir(round_name)
    remove_outputs(out / "images", out / "samples.parquet")
    prompts = [render(t, cfg.concept) for t in templates]
    plan = plan_samples(templates, prompts, g.images_per_prompt, round_seed(g.seed, index))
    images = generate(backbone.pipe, plan, steps=g.steps, guidance_scale=g.guidance_scale,
                      batch_size=g.batch_size, resolution=backbone.resolution, desc=f"generate {round_name}")
    write_samples(plan, images, out / "images", out / "samples.parquet", made_from=made_from(start_dir))


if __name__ == "__main__":
    app()
