"""Stage generate@round: K seeded images for each of the round's N training prompts."""

from pathlib import Path

import typer

from stages.common import (
    CONCEPT_OPTION,
    PARAMS_OPTION,
    ROUND_OPTION,
    disk_errors,
    producing,
    releases_cores,
    setup_round,
    stage_round,
    user_errors,
)

# The params keys this stage reads, exactly as dvc.yaml lists them (a test checks both).
# Earlier rounds' prompt counts (where this round's slice starts) reach it through its start model.
READS = ("model", "concept.token", "concept.class_noun", "generate", "rounds.${key}")

app = typer.Typer(add_completion=False)


@app.command()
@disk_errors
@releases_cores
def main(round_name: str | None = ROUND_OPTION, concept_name: str | None = CONCEPT_OPTION,
         params: Path = PARAMS_OPTION) -> None:
    """Sample the round's start model on its own slice of the generate.prompts pool
    (round 1 the first generate.num_prompts prompts, round 2 the next ones, ...).

    Writes rounds/<round>/images/*.png and rounds/<round>/samples.parquet.
    """
    # the model stack loads here, not at import: `dbdpo <stage> --help` answers at once
    from dbdpo.backbones import round_lora
    from dbdpo.data import train_prompts
    from dbdpo.provenance import made_from
    from dbdpo.rounds import concept_prompts, load_round_model, sample_round

    round_name = stage_round(round_name, "generate")
    cfg, plans, layout = setup_round(params, "generate", READS, concept_name, round_name, processes=True)
    plan, g = plans[round_name], cfg.generate
    with user_errors():  # every round's slice is checked: a short pool fails before round 1 samples
        templates = train_prompts(g.prompts, {name: p.prompts for name, p in plans.items()})[plan.name]
        start_dir = layout.checked_model(plan.start)
        backbone = load_round_model(cfg.model, layout.checked_model("round_0"), round_lora(start_dir),
                                    cfg.model.precision)
    out = layout.round_dir(plan.name)
    with producing(out / "images", out / "samples.parquet") as writes:  # every process samples; one writes
        sample_round(backbone, templates, concept_prompts(templates, cfg.concept), g.images_per_prompt, plan.seed,
                     g, out / "images" if writes else None, out / "samples.parquet",
                     made_from=made_from(start_dir), desc=layout.stage("generate", plan.name))


if __name__ == "__main__":
    app()
