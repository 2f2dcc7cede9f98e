"""Stage pair@round: the round's preferences from its scores: filtered winner/loser pairs
(pair.mode=pairs, DreamBoothDPO) or every prompt's ranked list (pair.mode=rank, RankDPO)."""

from pathlib import Path

import typer

from stages.common import (
    CONCEPT_OPTION,
    PARAMS_OPTION,
    ROUND_OPTION,
    disk_errors,
    producing,
    setup_round,
    stage_round,
    user_errors,
)

# The params keys this stage reads, exactly as dvc.yaml lists them (a test checks both).
READS = ("pair", "filter", "score.rewards", "rounds.${key}")

app = typer.Typer(add_completion=False)


@app.command()
@disk_errors
def main(round_name: str | None = ROUND_OPTION, concept_name: str | None = CONCEPT_OPTION,
         params: Path = PARAMS_OPTION) -> None:
    """Writes rounds/<round>/preferences/ (pairs.parquet + pickapic/train.parquet, the
    diffusers DPO layout, or ranked.parquet) and pair_summary.json (what was kept, a DVC metric)."""
    # the model stack loads here, not at import: `dbdpo <stage> --help` answers at once
    from dbdpo.artifacts import atomic_dir, write_json
    from dbdpo.preferences import write_preferences
    from dbdpo.provenance import RECORD_FILE, made_from
    from dbdpo.rounds import SCORED_SAMPLE_COLUMNS, pair_round

    round_name = stage_round(round_name, "pair")
    cfg, _, layout = setup_round(params, "pair", READS, concept_name, round_name)
    out = layout.round_dir(round_name)
    with user_errors():
        scores = layout.checked_table(out / "scores.parquet", [*SCORED_SAMPLE_COLUMNS, "IS", "TS"], "scores",
                                      round_name)
    with producing(out / "preferences", out / "pair_summary.json"):  # one process: it writes
        prefs = pair_round(scores, cfg.pair, cfg.filter, cfg.score.rewards)
        with atomic_dir(out / "preferences") as tmp:  # the export reads every image
            write_preferences(prefs, tmp)
            # the images too: dpo trains on them, and must refuse ones changed after pairing
            write_json(made_from(out / "scores.parquet", out / "images"), tmp / RECORD_FILE)
        write_json(prefs.summary, out / "pair_summary.json")
    typer.echo(f"{round_name}: {prefs.summary}")


if __name__ == "__main__":
    app()
