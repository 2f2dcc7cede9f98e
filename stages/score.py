"""Stage score@round: IS, TS (and DINO, PickScore, HPS, Aesthetic when set) for every generated image of the round."""

from pathlib import Path

import typer

from stages.common import (
    CONCEPT_OPTION,
    PARAMS_OPTION,
    ROUND_OPTION,
    SCORER_READS,
    disk_errors,
    producing,
    releases_cores,
    setup_round,
    stage_round,
    user_errors,
)

# The params keys this stage reads, exactly as dvc.yaml lists them (a test checks both).
READS = ("concept", *SCORER_READS)

app = typer.Typer(add_completion=False)


@app.command()
@disk_errors
@releases_cores
def main(round_name: str | None = ROUND_OPTION, concept_name: str | None = CONCEPT_OPTION,
         params: Path = PARAMS_OPTION) -> None:
    """Score rounds/<round>/images against the concept images and the prompts.

    Writes rounds/<round>/scores.parquet: one row per image, raw scores (pair normalizes).
    """
    # the model stack loads here, not at import: `dbdpo <stage> --help` answers at once
    from dbdpo.artifacts import write_parquet
    from dbdpo.data import load_concept, ts_texts
    from dbdpo.provenance import RECORD_KEY, made_from
    from dbdpo.rounds import score_round
    from dbdpo.sampling import SAMPLE_COLUMNS
    from dbdpo.scoring import build_scorers

    round_name = stage_round(round_name, "score")
    cfg, _, layout = setup_round(params, "score", READS, concept_name, round_name, processes=True)
    out = layout.round_dir(round_name)
    with user_errors():
        samples = layout.checked_table(out / "samples.parquet", SAMPLE_COLUMNS, "samples", round_name)
        concept = load_concept(cfg.concept)
        scorers = build_scorers(cfg.score, concept, ts_texts(cfg.concept, cfg.score.ts_prompt))
    with producing(out / "scores.parquet") as writes:
        table = score_round(samples, scorers, cfg.score.batch_size, desc=layout.stage("score", round_name))
        if writes:  # every process holds every score (dbdpo.distributed); one writes them
            # the images too: a hand-run pair must refuse images changed after they were scored
            table.attrs = {RECORD_KEY: made_from(out / "samples.parquet", out / "images", Path(cfg.concept.dir))}
            write_parquet(table, out / "scores.parquet")


if __name__ == "__main__":
    app()
