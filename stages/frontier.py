"""Stage frontier: round 0 under the knobs plain DreamBooth has (LoRA scale, guidance, fewer
steps), on the held-out prompts and seeds -> the baselines evaluate measures each round against."""

from pathlib import Path

import typer

from stages.common import (
    CONCEPT_OPTION,
    PARAMS_OPTION,
    SCORER_READS,
    disk_errors,
    producing,
    releases_cores,
    setup,
    user_errors,
)
from stages.held_out import held_out_setup

# The params keys this stage reads, exactly as dvc.yaml lists them (a test checks both).
# The whole evaluate group: the library samples with it as evaluate does (grid_prompts too,
# which it does not use).
READS = ("model", "concept", *SCORER_READS, "evaluate", "frontier")

app = typer.Typer(add_completion=False)


@app.command()
@disk_errors
@releases_cores
def main(concept_name: str | None = CONCEPT_OPTION, params: Path = PARAMS_OPTION) -> None:
    """Writes eval/baselines/images/<point>/ and eval/baselines/scores.parquet: one row per
    image of each baseline point, on evaluate's prompts and seeds (paired with round 0's)."""
    # the model stack loads here, not at import: `dbdpo <stage> --help` answers at once
    from dbdpo.artifacts import atomic_dir, write_parquet
    from dbdpo.backbones import round_lora
    from dbdpo.early_stops import load_early_stops
    from dbdpo.frontier import baseline_points, sample_baselines
    from dbdpo.provenance import RECORD_KEY, made_from

    cfg, layout = setup(params, "frontier", READS, concept_name, processes=True)
    e = cfg.evaluate
    with user_errors():
        round_0 = layout.checked_model("round_0")
        lora = round_lora(round_0)
        early_stops = load_early_stops(layout.checked_folder(layout.early_stops, "early_stops", None))
        templates, _, scorers, backbone = held_out_setup(cfg, layout)
    points = baseline_points(cfg.frontier, e.guidance_scale, has_lora=bool(lora), early_stops=early_stops)
    with producing(layout.baselines) as writes:
        if not writes:  # samples and scores its share; every process gets all (dbdpo.distributed)
            sample_baselines(backbone, lora, points, templates, cfg.concept, e, scorers, None, cfg.score.batch_size)
            return
        with atomic_dir(layout.baselines) as out:
            table = sample_baselines(backbone, lora, points, templates, cfg.concept, e, scorers, out / "images",
                                     cfg.score.batch_size)
            table.attrs = {RECORD_KEY: made_from(round_0, layout.early_stops, Path(cfg.concept.dir))}
            write_parquet(table, out / "scores.parquet")
    typer.echo(f"frontier: {len(points)} baseline points ({', '.join(p.name for p in points) or 'none'}), "
               f"{len(table)} images")


if __name__ == "__main__":
    app()
